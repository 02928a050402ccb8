"""Which Flax module class owns each parameter, so recipes can target class names ("Dense")."""

from __future__ import annotations

from typing import Any

import jax
from flax import linen as nn
from flax import nnx


def linen_module_types(model: nn.Module, *args: Any, **kwargs: Any) -> dict[str, str]:
    """Module path ("params/Dense_0") -> class name, from an abstract init of a Linen model.

    args/kwargs are the model's example inputs (arrays or jax.ShapeDtypeStruct); nothing is
    computed (jax.eval_shape).
    """
    found: dict[str, str] = {}

    def record(next_fun, call_args, call_kwargs, context):
        path = "/".join(("params",) + tuple(context.module.path))
        found.setdefault(path, type(context.module).__name__)
        return next_fun(*call_args, **call_kwargs)

    def init(rng):
        with nn.intercept_methods(record):
            return model.init(rng, *args, **kwargs)

    jax.eval_shape(init, jax.random.key(0))
    return found


def nnx_module_types(model: nnx.Module) -> dict[str, str]:
    """Module path ("layers/0/linear") -> class name for an NNX module (paths as in nnx.state)."""
    found: dict[str, str] = {}
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Module):
            found["/".join(str(p) for p in path)] = type(node).__name__
    return found


def owner_type(module_types: dict[str, str] | None, path: str) -> str | None:
    """Class of the module owning parameter `path` (its parent path), if known."""
    if not module_types:
        return None
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    return module_types.get(parent)
