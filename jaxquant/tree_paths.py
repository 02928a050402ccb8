"""Flattening Flax parameter trees (Linen dicts, NNX State) into '/'-joined paths."""

from __future__ import annotations

from typing import Any, Callable

import jax

from jaxquant.core.qarray import QArray


def key_name(key: Any) -> str | None:
    """One path entry as text; NNX's Variable `.value` attribute is skipped (returns None)."""
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return None if key.name in ("value", "raw_value") else key.name
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def path_str(keypath: tuple) -> str:
    return "/".join(n for n in (key_name(k) for k in keypath) if n is not None)


def is_leaf(x: Any) -> bool:
    """QArrays are leaves of a parameter tree, not nodes."""
    return isinstance(x, QArray)


def flatten(tree: Any) -> tuple[list[tuple[str, Any]], Any]:
    """Tree -> ([(path, leaf), ...], treedef), with QArrays kept whole."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return [(path_str(p), leaf) for p, leaf in leaves], treedef


def map_with_path(fn: Callable[[str, Any], Any], tree: Any) -> Any:
    """Apply fn(path, leaf) to every leaf (QArrays whole) and rebuild the same structure."""
    items, treedef = flatten(tree)
    return jax.tree_util.tree_unflatten(treedef, [fn(p, leaf) for p, leaf in items])
