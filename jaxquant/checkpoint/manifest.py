"""Flattening quantized trees to named arrays plus a JSON manifest, and back.

The manifest records, for every leaf path, either {"kind": "array"} or {"kind": "qarray",
"meta": ..., "fields": {...}} (nested for QArray scales), so a checkpoint can be read without
unpickling anything and validated before arrays are allocated.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from jaxquant.core.qarray import QArray, QMeta
from jaxquant.core.spec import ActivationSpec, Clipping
from jaxquant.errors import JaxquantError
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


def from_arrays(arrays: dict[str, Any], manifest: dict[str, Any]) -> dict:
    """Inverse of to_arrays: a nested dict keyed by the '/'-separated paths."""
    root: dict[str, Any] = {}
    for path, entry in manifest.items():
        node = root
        parts = path.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = _build_leaf(entry, arrays, path)
    return root
