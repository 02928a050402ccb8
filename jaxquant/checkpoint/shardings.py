"""Where restored arrays go: one Sharding for all, or one per leaf (pytree, {path: ...}, callable).

A stored array is named by its leaf path plus, inside a QArray, its field:
"params/layers_0/attn/q_proj/kernel" (a plain array) or ".../kernel" with field "qvalue",
"scale", "zero_point", "scale.qvalue" (NF4's nested scale), ...

`sharding` may be
  None                          every array on the default device;
  a jax.sharding.Sharding       every array there;
  a callable (path, field, struct) -> Sharding | None, with field "" for plain arrays and
                                struct a jax.ShapeDtypeStruct of the stored array;
  a mapping, nested like the restored tree ({"params": {"embed": {...}}}) or flat by path
                                ({"params/embed/embedding": s}); a leaf's value is a Sharding
                                (every field of a QArray gets it), a {field: Sharding} dict, or a
                                QArray whose fields are Shardings (as jax.tree.map over a
                                QArray gives). A path absent from the mapping gets the default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax

from jaxquant.core.qarray import QArray
from jaxquant.errors import JaxquantError

ShardingSpec = Any  # None | Sharding | Callable | Mapping, see the module docstring


def default_sharding() -> jax.sharding.Sharding:
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])


def _lookup(mapping: Mapping, path: str) -> Any:
    if path in mapping:
        return mapping[path]
    node: Any = mapping
    for part in path.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _field_of(value: Any, field: str, path: str) -> Any:
    """The Sharding for `field` of a QArray leaf from the per-leaf value."""
    if value is None or isinstance(value, jax.sharding.Sharding) or not field:
        return value
    node = value
    for part in field.split("."):
        if isinstance(node, jax.sharding.Sharding):
            return node
        if isinstance(node, QArray):
            node = getattr(node, part, None)
        elif isinstance(node, Mapping):
            node = node.get(part)
        else:
            raise JaxquantError(f"sharding for {path}: expected a Sharding, a {{field: Sharding}} "
                                f"dict or a QArray of Shardings, got {type(value).__name__}")
    return node


def resolve(spec: ShardingSpec, path: str, field: str, struct: jax.ShapeDtypeStruct
            ) -> jax.sharding.Sharding:
    """The Sharding of one stored array (`field` "" for a plain array)."""
    if spec is None:
        out = None
    elif isinstance(spec, jax.sharding.Sharding):
        out = spec
    elif isinstance(spec, Mapping):
        out = _field_of(_lookup(spec, path), field, path)
    elif callable(spec):
        out = spec(path, field, struct)
    else:
        raise JaxquantError(f"sharding: expected None, a jax.sharding.Sharding, a mapping or a "
                            f"callable, got {type(spec).__name__}")
    if out is None:
        return default_sharding()
    if not isinstance(out, jax.sharding.Sharding):
        where = f"{path}.{field}" if field else path
        raise JaxquantError(f"sharding for {where}: expected a jax.sharding.Sharding, got "
                            f"{type(out).__name__}")
    return out
