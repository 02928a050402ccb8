"""Recognizing a checkpoint on disk, and saving/loading parameter trees in any supported format."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from jaxquant.errors import JaxquantError

SAVE_FORMATS = ("orbax", "compressed-tensors")


def detect(path: str | os.PathLike) -> str:
    """"orbax", "compressed-tensors", "gptq", "awq" or "gguf"; JaxquantError otherwise."""
    from jaxquant.checkpoint.orbax_io import MANIFEST
    from jaxquant.interop import gptq_awq

    p = Path(path)
    if p.is_file():
        with open(p, "rb") as f:
            if f.read(4) == b"GGUF":
                return "gguf"
        raise JaxquantError(f"{str(p)!r} is a file but not GGUF; checkpoints are directories "
                            "(Orbax, compressed-tensors, GPTQ, AWQ) or .gguf files")
    if not p.is_dir():
        raise JaxquantError(f"{str(p)!r} does not exist")
    if (p / MANIFEST).is_file():
        return "orbax"
    cfg = p / "config.json"
    if cfg.is_file():
        try:
            q = json.loads(cfg.read_text()).get("quantization_config") or {}
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise JaxquantError(f"{cfg}: corrupted JSON: {e}") from None
        if q.get("quant_method") == "compressed-tensors":
            return "compressed-tensors"
    method = gptq_awq.detect(p)
    if method:
        return method
    raise JaxquantError(f"{str(p)!r} is not a checkpoint jaxquant recognizes (no {MANIFEST}, no "
                        "compressed-tensors/GPTQ/AWQ quantization config)")


def save(path: str | os.PathLike, tree: Any, recipe: Any, *, format: str = "orbax",
         base_model: str | None = None, overwrite: bool = False) -> Path:
    """Save a (quantized) tree as an Orbax checkpoint or a compressed-tensors directory."""
    from jaxquant import checkpoint
    from jaxquant.interop import compressed_tensors

    if format == "orbax":
        return checkpoint.save(path, tree, recipe, overwrite=overwrite,
                               extra={"model": base_model} if base_model else None)
    if format == "compressed-tensors":
        return compressed_tensors.export_dir(path, tree, recipe=recipe, base_model=base_model,
                                             overwrite=overwrite)
    raise JaxquantError(f"format {format!r} is not one jaxquant saves; use one of "
                        f"{', '.join(SAVE_FORMATS)}")


def load(path: str | os.PathLike) -> tuple[dict, Any, str | None]:
    """(params tree, recipe or None, base model name or None) of a checkpoint directory."""
    from jaxquant import checkpoint
    from jaxquant.interop import compressed_tensors, gptq_awq
    from jaxquant.recipes.io import recipe_from_dict

    fmt = detect(path)
    if fmt == "orbax":
        tree, recipe, info = checkpoint.restore(path)
        return tree, recipe, (info.get("extra") or {}).get("model")
    if fmt == "gguf":
        raise JaxquantError(f"{path}: a GGUF file is a model, not a checkpoint of one: pass it as "
                            "--model directly")
    imported = (compressed_tensors.import_dir(path) if fmt == "compressed-tensors"
                else gptq_awq.import_dir(path))
    recipe = imported.extra.get("recipe")
    params = imported.to_params()
    return (params, recipe_from_dict(recipe) if recipe else describing_recipe(params, fmt),
            imported.extra.get("base_model"))


def describing_recipe(params: Any, fmt: str) -> Any | None:
    """A recipe named "<fmt>-import" whose one rule carries the first quantized leaf's scheme
    (for reports; a checkpoint written elsewhere has no jaxquant recipe); None if nothing is
    quantized."""
    from jaxquant.core.qarray import QArray
    from jaxquant.recipes.recipe import Recipe, Rule
    from jaxquant.recipes.schemes import WeightScheme
    from jaxquant.tree_paths import flatten

    q = next((leaf for _, leaf in flatten(params)[0] if isinstance(leaf, QArray)), None)
    if q is None:
        return None
    group = q.meta.block_shape[q.meta.axis] if q.meta.granularity == "group" else None
    weight = WeightScheme(format=q.meta.format, granularity=q.meta.granularity,
                          group_size=group)
    return Recipe((Rule(targets=(".*",), weight=weight),), ignore=(), name=f"{fmt}-import")
