"""Orbax save/restore of (quantized) parameter trees with their recipe.

Layout of a checkpoint directory:
    jaxquant.json   format version, library version, recipe, the tree manifest
    arrays/         an Orbax StandardCheckpointer tree of every stored array (storage dtypes kept:
                    uint8 packed codes, float8, bf16 scales)
Writes go to a temporary sibling directory renamed into place at the end: a crash mid-save never
leaves a directory that restores.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxquant.checkpoint.manifest import FORMAT_VERSION, from_arrays, to_arrays
from jaxquant.errors import JaxquantError
from jaxquant.recipes.io import recipe_from_dict, recipe_to_dict
from jaxquant.recipes.recipe import Recipe

MANIFEST = "jaxquant.json"


def _escape(key: str) -> str:
    return key.replace("/", "~")


def save(path: str | os.PathLike, tree: Any, recipe: Recipe | None = None, *,
         overwrite: bool = False, extra: dict | None = None) -> Path:
    """Save `tree` (quantized or float) and its recipe to directory `path` atomically."""
    from jaxquant import __version__

    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise JaxquantError(f"output directory {str(path)!r} exists; pass overwrite=True "
                            "(--overwrite) or choose another path")
    arrays, manifest = to_arrays(tree)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(tmp / "arrays", {_escape(k): v for k, v in arrays.items()})
        ckptr.wait_until_finished()
        info = {
            "format_version": FORMAT_VERSION,
            "library": "jaxquant",
            "library_version": __version__,
            "recipe": recipe_to_dict(recipe) if recipe is not None else None,
            "tree": manifest,
            "extra": extra or {},
        }
        (tmp / MANIFEST).write_text(json.dumps(info, indent=1))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_info(path: str | os.PathLike) -> dict:
    """The manifest of a checkpoint directory, validated."""
    path = Path(path)
    f = path / MANIFEST
    if not f.is_file():
        raise JaxquantError(f"{str(path)!r} is not a jaxquant checkpoint (no {MANIFEST})")
    try:
        info = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise JaxquantError(f"{f}: corrupted manifest: {e}") from None
    version = info.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise JaxquantError(
            f"{path}: checkpoint format version {version!r} is newer than this jaxquant supports "
            f"({FORMAT_VERSION}); upgrade jaxquant"
        )
    return info


def restore(path: str | os.PathLike, sharding: Any = None) -> tuple[dict, Recipe | None, dict]:
    """Restore (tree, recipe, info). `sharding`: a jax.sharding.Sharding for every array, or None
    for the default device."""
    path = Path(path).absolute()
    info = read_info(path)
    manifest = info["tree"]
    meta = ocp.StandardCheckpointer().metadata(path / "arrays")
    tree_meta = getattr(meta, "item_metadata", meta)
    target = {}
    for key, m in dict(tree_meta).items():
        sh = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target[key] = jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sh)
    stored = ocp.StandardCheckpointer().restore(path / "arrays", target)
    arrays = {k.replace("~", "/"): v for k, v in stored.items()}
    recipe = recipe_from_dict(info["recipe"]) if info.get("recipe") else None
    return from_arrays(arrays, manifest), recipe, info
