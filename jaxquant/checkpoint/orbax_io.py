"""Orbax save/restore of (quantized) parameter trees with their recipe.

Layout of a checkpoint directory:
    jaxquant.json   format version, library version, recipe, the tree manifest
    arrays/         an Orbax tree of every stored array (storage dtypes kept: uint8 packed codes,
                    int8, float8, bf16 scales, uint8 zero-points)
Writes go to a temporary sibling directory renamed into place at the end: a crash mid-save never
leaves a directory that restores (the manifest is the last file written, and the rename is
atomic). Restores validate the manifest against the stored array metadata before reading any
array: `restore` (everything, onto given shardings), `abstract` (shapes only, nothing read),
`open_checkpoint(...).leaf(path)` (one leaf at a time).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxquant.checkpoint import shardings
from jaxquant.checkpoint.atomic import atomic_directory
from jaxquant.checkpoint.manifest import (
    FORMAT_VERSION,
    abstract_leaf,
    array_entries,
    build_leaf,
    nest,
    to_arrays,
    validate_entry,
)
from jaxquant.core.qarray import QArray
from jaxquant.errors import JaxquantError
from jaxquant.recipes.io import recipe_from_dict, recipe_to_dict
from jaxquant.recipes.recipe import Recipe
from jaxquant.tree_paths import flatten

MANIFEST = "jaxquant.json"


def _escape(key: str) -> str:
    return key.replace("/", "~")


def save(path: str | os.PathLike, tree: Any, recipe: Recipe | None = None, *,
         overwrite: bool = False, extra: dict | None = None) -> Path:
    """Save `tree` (quantized or float) and its recipe to directory `path` atomically. Weights
    in the GPU layout (jaxquant.inference.to_gpu_layout) are saved in the canonical one."""
    from jaxquant import __version__
    from jaxquant.inference.gpu_layout import to_canonical

    tree = to_canonical(tree)

    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise JaxquantError(f"output directory {str(path)!r} exists; pass overwrite=True "
                            "(--overwrite) or choose another path")
    arrays, manifest = to_arrays(tree)
    with atomic_directory(path) as tmp:
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
    return path


def read_info(path: str | os.PathLike) -> dict:
    """The manifest of a checkpoint directory, validated (version, every leaf's entry)."""
    path = Path(path)
    f = path / MANIFEST
    if not f.is_file():
        raise JaxquantError(f"{str(path)!r} is not a jaxquant checkpoint (no {MANIFEST})")
    try:
        info = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise JaxquantError(f"{f}: corrupted manifest: {e}") from None
    if not isinstance(info, dict):
        raise JaxquantError(f"{f}: corrupted manifest: not a JSON object")
    version = info.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise JaxquantError(
            f"{path}: checkpoint format version {version!r} is newer than this jaxquant supports "
            f"({FORMAT_VERSION}); upgrade jaxquant"
        )
    tree = info.get("tree")
    if not isinstance(tree, dict):
        raise JaxquantError(f"{f}: corrupted manifest: no tree")
    for leaf_path, entry in tree.items():
        validate_entry(entry, leaf_path)
    return info


class Checkpoint:
    """An opened checkpoint: manifest validated against the stored arrays, nothing read yet.

    .paths           leaf paths in stored order
    .recipe, .info   the recipe (or None) and the whole manifest
    .abstract()      the tree with jax.ShapeDtypeStruct for every stored array
    .leaf(path)      read one leaf (array or QArray)
    .leaves()        iterate (path, leaf), reading one leaf at a time
    .restore()       read everything
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).absolute()
        self.info = read_info(self.path)
        self.manifest: dict[str, Any] = self.info["tree"]
        self.recipe: Recipe | None = (recipe_from_dict(self.info["recipe"])
                                      if self.info.get("recipe") else None)
        self._stored = self._stored_metadata()
        for leaf_path, entry in self.manifest.items():
            for field, e in array_entries(entry, leaf_path):
                where = f"{leaf_path}.{field}" if field else leaf_path
                got = self._stored.get(_escape(e["key"]))
                if got is None:
                    raise JaxquantError(f"{self.path}: tensor {where} is missing from arrays/; "
                                        "the checkpoint is damaged")
                if tuple(got.shape) != tuple(e["shape"]) or got.dtype.name != e["dtype"]:
                    raise JaxquantError(
                        f"{self.path}: tensor {where} is stored as {got.dtype.name}"
                        f"{list(got.shape)}, the manifest says {e['dtype']}{e['shape']}; the "
                        "checkpoint is damaged")

    def _stored_metadata(self) -> dict[str, Any]:
        try:
            meta = ocp.PyTreeCheckpointer().metadata(self.path / "arrays")
            tree = getattr(meta, "item_metadata", meta)
            return dict(getattr(tree, "tree", tree))
        except Exception as e:  # orbax raises assorted errors on missing/damaged metadata
            raise JaxquantError(f"{self.path}: cannot read the array metadata in arrays/ "
                                f"({type(e).__name__}: {e}); the checkpoint is damaged") from None

    @property
    def paths(self) -> list[str]:
        return list(self.manifest)

    def abstract(self) -> dict:
        """The tree of ShapeDtypeStructs (QArrays keep their metadata); reads no array."""
        return nest({p: abstract_leaf(e, p) for p, e in self.manifest.items()})

    def _read(self, leaf_paths: list[str], sharding: shardings.ShardingSpec) -> dict[str, Any]:
        item, restore_args = {}, {}
        for leaf_path in leaf_paths:
            entry = self.manifest[leaf_path]
            for field, e in array_entries(entry, leaf_path):
                struct = jax.ShapeDtypeStruct(tuple(e["shape"]), e["dtype"])
                key = _escape(e["key"])
                item[key] = 0
                restore_args[key] = ocp.ArrayRestoreArgs(
                    sharding=shardings.resolve(sharding, leaf_path, field, struct))
        try:
            stored = ocp.PyTreeCheckpointer().restore(
                self.path / "arrays",
                args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                            partial_restore=True))
        except JaxquantError:
            raise
        except Exception as e:  # truncated / corrupted chunk files
            raise JaxquantError(f"{self.path}: reading {', '.join(leaf_paths[:3])}"
                                f"{' ...' if len(leaf_paths) > 3 else ''} failed "
                                f"({type(e).__name__}: {e}); the checkpoint is damaged") from None
        return {k.replace("~", "/"): v for k, v in stored.items()}

    def leaf(self, leaf_path: str, sharding: shardings.ShardingSpec = None) -> Any:
        """Read one leaf (array or QArray)."""
        if leaf_path not in self.manifest:
            raise JaxquantError(f"{self.path}: no leaf {leaf_path!r}; leaves are e.g. "
                                f"{', '.join(self.paths[:4])}")
        return build_leaf(self.manifest[leaf_path], self._read([leaf_path], sharding), leaf_path)

    def leaves(self, sharding: shardings.ShardingSpec = None) -> Iterator[tuple[str, Any]]:
        """(path, leaf) one leaf at a time: peak memory is one leaf."""
        for leaf_path in self.paths:
            yield leaf_path, self.leaf(leaf_path, sharding)

    def restore(self, sharding: shardings.ShardingSpec = None) -> dict:
        arrays = self._read(self.paths, sharding)
        return nest({p: build_leaf(e, arrays, p) for p, e in self.manifest.items()})


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open and validate a checkpoint directory without reading any array."""
    return Checkpoint(path)


def abstract(path: str | os.PathLike) -> dict:
    """The stored tree as jax.ShapeDtypeStructs (QArrays with struct fields); reads no array."""
    return Checkpoint(path).abstract()


def _logical(leaf: Any) -> tuple[tuple[int, ...], str]:
    if isinstance(leaf, QArray):
        return tuple(leaf.meta.shape), "quantized"
    return tuple(leaf.shape), ""


def check_tree(stored: Any, target: Any, where: str = "checkpoint") -> None:
    """Error naming the first leaf where `stored` (abstract or real) does not fit `target` (the
    model's parameters, real or from jax.eval_shape): missing/extra leaves, logical shapes."""
    got = dict(flatten(stored)[0])
    want = dict(flatten(target)[0])
    missing = [p for p in want if p not in got]
    extra = [p for p in got if p not in want]
    if missing:
        raise JaxquantError(f"{where} does not match the model: tensor {missing[0]!r} is missing"
                            f" ({len(missing)} missing in all)")
    if extra:
        raise JaxquantError(f"{where} does not match the model: unexpected tensor {extra[0]!r} "
                            f"({len(extra)} extra in all)")
    for p, leaf in want.items():
        if _logical(got[p])[0] != _logical(leaf)[0]:
            raise JaxquantError(f"{where} does not match the model: tensor {p!r} has shape "
                                f"{_logical(got[p])[0]}, the model expects {_logical(leaf)[0]}")


def restore(path: str | os.PathLike, sharding: shardings.ShardingSpec = None, *,
            target: Any = None) -> tuple[dict, Recipe | None, dict]:
    """Restore (tree, recipe, info).

    sharding: None (default device), one jax.sharding.Sharding, or per leaf (a pytree or
              {path: Sharding} mapping, or a callable (path, field, struct) -> Sharding); see
              jaxquant.checkpoint.shardings.
    target:   the model's parameter tree (real or abstract): checked against the stored tree
              before any array is read; a mismatch names the tensor.
    """
    ckpt = Checkpoint(path)
    if target is not None:
        check_tree(ckpt.abstract(), target, str(ckpt.path))
    return ckpt.restore(sharding), ckpt.recipe, ckpt.info
