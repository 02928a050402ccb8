"""Flattening quantized trees to named arrays plus a JSON manifest, and back.

The manifest records, for every leaf path, either {"kind": "array"} or {"kind": "qarray",
"meta": ..., "fields": {...}} (nested for QArray scales), so a checkpoint can be read without
unpickling anything and validated before arrays are allocated.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxquant.core import blocks
from jaxquant.core.qarray import QArray, QMeta
from jaxquant.core.spec import ActivationSpec, Clipping
from jaxquant.errors import JaxquantError
from jaxquant.formats.registry import get_format
from jaxquant.tree_paths import flatten

FORMAT_VERSION = 1
_FIELDS = ("qvalue", "scale", "zero_point", "offset", "input_scale", "input_smooth")


def meta_to_dict(meta: QMeta) -> dict:
    return dataclasses.asdict(meta)


def meta_from_dict(d: dict, where: str) -> QMeta:
    try:
        d = dict(d)
        act = d.get("activation")
        if act is not None:
            act = dict(act)
            act["clipping"] = Clipping(**act.get("clipping", {}))
            d["activation"] = ActivationSpec(**act)
        for key in ("shape", "block_shape"):
            d[key] = tuple(d[key])
        return QMeta(**d)
    except (TypeError, KeyError) as e:
        raise JaxquantError(f"checkpoint leaf {where}: malformed quantization metadata: {e}") from None


def _flatten_qarray(prefix: str, q: QArray, arrays: dict[str, Any]) -> dict:
    fields: dict[str, Any] = {}
    for name in _FIELDS:
        value = getattr(q, name)
        if value is None:
            continue
        key = f"{prefix}.{name}"
        if isinstance(value, QArray):
            fields[name] = _flatten_qarray(key, value, arrays)
        else:
            arrays[key] = value
            fields[name] = {"kind": "array", "key": key, "dtype": jnp.dtype(value.dtype).name,
                            "shape": list(value.shape)}
    return {"kind": "qarray", "meta": meta_to_dict(q.meta), "fields": fields}


def to_arrays(tree: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """tree -> (flat {key: array}, manifest {path: entry})."""
    arrays: dict[str, Any] = {}
    manifest: dict[str, Any] = {}
    for path, leaf in flatten(tree)[0]:
        if isinstance(leaf, QArray):
            manifest[path] = _flatten_qarray(path, leaf, arrays)
        elif hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
            arrays[path] = leaf
            manifest[path] = {"kind": "array", "key": path, "dtype": jnp.dtype(leaf.dtype).name,
                              "shape": list(leaf.shape)}
        else:
            raise JaxquantError(f"{path}: cannot checkpoint a {type(leaf).__name__} leaf")
    return arrays, manifest


def _build_qarray(entry: dict, arrays: dict[str, Any], where: str) -> QArray:
    meta = meta_from_dict(entry.get("meta", {}), where)
    kwargs: dict[str, Any] = {}
    for name, sub in entry.get("fields", {}).items():
        if name not in _FIELDS:
            raise JaxquantError(f"checkpoint leaf {where}: unknown field {name!r}")
        kwargs[name] = _build_leaf(sub, arrays, f"{where}.{name}")
    if "qvalue" not in kwargs or "scale" not in kwargs:
        raise JaxquantError(f"checkpoint leaf {where}: missing qvalue or scale")
    kwargs.setdefault("zero_point", None)
    return QArray(meta=meta, **kwargs)


def _build_leaf(entry: dict, arrays: dict[str, Any], where: str) -> Any:
    kind = entry.get("kind")
    if kind == "qarray":
        return _build_qarray(entry, arrays, where)
    if kind == "array":
        key = entry.get("key")
        if key not in arrays:
            raise JaxquantError(f"checkpoint leaf {where}: tensor {key!r} is missing")
        return arrays[key]
    raise JaxquantError(f"checkpoint leaf {where}: unknown kind {kind!r}")


def nest(flat: dict[str, Any]) -> dict:
    """{"a/b/c": leaf} -> {"a": {"b": {"c": leaf}}}."""
    root: dict[str, Any] = {}
    for path, leaf in flat.items():
        node = root
        parts = path.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = leaf
    return root


def build_leaf(entry: dict, arrays: dict[str, Any], where: str) -> Any:
    """One manifest entry -> an array or QArray from `arrays` (keyed by the entry's keys)."""
    return _build_leaf(entry, arrays, where)


def from_arrays(arrays: dict[str, Any], manifest: dict[str, Any]) -> dict:
    """Inverse of to_arrays: a nested dict keyed by the '/'-separated paths."""
    return nest({path: _build_leaf(entry, arrays, path) for path, entry in manifest.items()})


def array_entries(entry: dict, where: str) -> list[tuple[str, dict]]:
    """Every stored array of one manifest entry: [(field path like "scale.qvalue" or "", entry)]."""
    if entry.get("kind") == "array":
        return [("", entry)]
    out = []
    for name, sub in entry.get("fields", {}).items():
        out += [(f"{name}.{f}" if f else name, e) for f, e in array_entries(sub, where)]
    return out


def abstract_leaf(entry: dict, where: str) -> Any:
    """The leaf with jax.ShapeDtypeStruct in place of every stored array (nothing read)."""
    structs = {e["key"]: jax.ShapeDtypeStruct(tuple(e["shape"]), jnp.dtype(e["dtype"]))
               for _, e in array_entries(entry, where)}
    return _build_leaf(entry, structs, where)


def _check_array_entry(e: Any, where: str) -> tuple[tuple[int, ...], jnp.dtype]:
    if not isinstance(e, dict) or e.get("kind") != "array" or not isinstance(e.get("key"), str):
        raise JaxquantError(f"checkpoint leaf {where}: malformed array entry {e!r}")
    shape = e.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise JaxquantError(f"checkpoint leaf {where}: bad shape {shape!r}")
    try:
        dtype = jnp.dtype(e.get("dtype"))
    except TypeError:
        raise JaxquantError(f"checkpoint leaf {where}: unknown dtype {e.get('dtype')!r}") from None
    return tuple(shape), dtype


def _expect(where: str, field: str, got: Any, want: Any) -> None:
    if got != want:
        raise JaxquantError(f"checkpoint leaf {where}: {field} is {got}, its quantization "
                            f"metadata requires {want}; the checkpoint is damaged or was "
                            "edited")


def validate_entry(entry: Any, where: str) -> None:
    """Check one manifest entry for internal consistency (packed code shape, scale grid,
    storage dtypes) before any array is read; JaxquantError naming the leaf and field."""
    if not isinstance(entry, dict):
        raise JaxquantError(f"checkpoint leaf {where}: malformed entry {entry!r}")
    if entry.get("kind") == "array":
        _check_array_entry(entry, where)
        return
    if entry.get("kind") != "qarray":
        raise JaxquantError(f"checkpoint leaf {where}: unknown kind {entry.get('kind')!r}")
    meta = meta_from_dict(entry.get("meta", {}), where)
    fmt = _format(meta.format, where)
    if len(meta.block_shape) != len(meta.shape) or not -len(meta.shape) <= meta.axis < max(
            len(meta.shape), 1):
        raise JaxquantError(f"checkpoint leaf {where}: block shape {meta.block_shape} / axis "
                            f"{meta.axis} do not fit shape {meta.shape}")
    fields = entry.get("fields", {})
    if not isinstance(fields, dict) or "qvalue" not in fields or "scale" not in fields:
        raise JaxquantError(f"checkpoint leaf {where}: missing qvalue or scale")
    shape, dtype = _check_array_entry(fields["qvalue"], f"{where}.qvalue")
    want = list(meta.shape)
    if fmt.codec.packed and want:
        want[meta.axis] = -(-want[meta.axis] // 2)
    _expect(f"{where}", "qvalue shape", shape, tuple(want))
    _expect(f"{where}", "qvalue dtype", dtype.name, jnp.dtype(fmt.codec.storage_dtype).name)
    grid = blocks.grid_shape(meta.shape, meta.block_shape)
    scale = fields["scale"]
    if isinstance(scale, dict) and scale.get("kind") == "qarray":
        validate_entry(scale, f"{where}.scale")
        n = math.prod(scale.get("meta", {}).get("shape", []) or [1])
        if n < math.prod(grid):
            raise JaxquantError(f"checkpoint leaf {where}: nested scale holds {n} values, the "
                                f"block grid {grid} needs {math.prod(grid)}")
    else:
        s_shape, _ = _check_array_entry(scale, f"{where}.scale")
        _expect(where, "scale shape", s_shape, grid)
    if "zero_point" in fields:
        z_shape, _ = _check_array_entry(fields["zero_point"], f"{where}.zero_point")
        _expect(where, "zero_point shape", z_shape, grid)
    elif fmt.asymmetric:
        raise JaxquantError(f"checkpoint leaf {where}: asymmetric format {meta.format} has no "
                            "zero_point")
    for name in fields:
        if name not in _FIELDS:
            raise JaxquantError(f"checkpoint leaf {where}: unknown field {name!r}")


def _format(name: str, where: str) -> Any:
    try:
        return get_format(name)
    except JaxquantError as e:
        raise JaxquantError(f"checkpoint leaf {where}: {e}") from None
