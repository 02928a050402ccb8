"""Quantized forward for Flax NNX modules.

NNX has no method-interception hook, and its layers read weights with `self.kernel[...]` and
`promote_dtype`, which a QArray cannot pass through. Inside `intercept()` the `__call__` (and
`Embed.attend`) of nnx.Linear, nnx.LinearGeneral, nnx.Einsum and nnx.Embed are swapped for
versions that send QArray weights to `quantized_dot_general` and call the original method for
float weights; outside the context nothing is patched. Models need no edits: merge the graph
with the quantized state (`nnx.merge(graphdef, jaxquant.quantize(state, recipe))`) and call it
inside `intercept()`. The patch is process-wide while active: do not run float NNX code in other
threads at the same time.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import jax.numpy as jnp
from flax import nnx

from jaxquant.core.qarray import QArray
from jaxquant.errors import JaxquantError
from jaxquant.inference.einsum_dims import einsum_dimension_numbers
from jaxquant.inference.embedding import take_rows
from jaxquant.inference.qdot import quantized_dot_general


def _value(var: Any) -> Any:
    if var is None:
        return None
    return var.get_value() if hasattr(var, "get_value") else var.value


def _dtype(module: Any, x: Any, *params: Any) -> Any:
    if getattr(module, "dtype", None) is not None:
        return module.dtype
    return jnp.result_type(x.dtype, *[p.dtype for p in params if p is not None])


def _linear(self: nnx.Linear, x: Any, out_sharding: Any = None) -> Any:
    kernel, bias = _value(self.kernel), _value(self.bias)
    dtype = _dtype(self, x, kernel, bias)
    y = quantized_dot_general(
        x.astype(dtype), kernel, (((x.ndim - 1,), (0,)), ((), ())),
        precision=self.precision, name=type(self).__name__,
    )
    return y + bias.astype(dtype) if bias is not None else y


def _linear_general(self: nnx.LinearGeneral, x: Any, out_sharding: Any = None) -> Any:
    if len(self.batch_axis):
        raise JaxquantError("quantized nnx.LinearGeneral with batch_axis is not supported; "
                            "add this layer to the recipe's ignore list")
    kernel, bias = _value(self.kernel), _value(self.bias)
    axis = tuple(a % x.ndim for a in self.axis)
    dtype = _dtype(self, x, kernel, bias)
    y = quantized_dot_general(
        x.astype(dtype), kernel, ((axis, tuple(range(len(axis)))), ((), ())),
        precision=self.precision, name=type(self).__name__,
    )
    return y + bias.astype(dtype) if bias is not None else y


def _einsum(self: nnx.Einsum, x: Any, einsum_str: str | None = None, out_sharding: Any = None) -> Any:
    spec = (einsum_str or self.einsum_str).replace(" ", "")
    kernel, bias = _value(self.kernel), _value(self.bias)
    dims, perm = einsum_dimension_numbers(spec, x.ndim, kernel.ndim)
    dtype = _dtype(self, x, kernel, bias)
    y = quantized_dot_general(
        x.astype(dtype), kernel, dims, precision=self.precision, name=type(self).__name__
    ).transpose(perm)
    if bias is not None:
        ins, out_str = spec.split("->")
        w_str = ins.split(",")[1]
        shape = [kernel.shape[w_str.index(c)] if c in w_str else 1 for c in out_str]
        y = y + bias.astype(dtype).reshape(shape)
    return y


def _embed_call(self: nnx.Embed, ids: Any, out_sharding: Any = None) -> Any:
    table = _value(self.embedding)
    return take_rows(table, ids, self.dtype or table.dtype)


def _embed_attend(self: nnx.Embed, query: Any, out_sharding: Any = None) -> Any:
    table = _value(self.embedding)
    dtype = _dtype(self, query, table)
    return quantized_dot_general(
        query.astype(dtype), table, (((query.ndim - 1,), (1,)), ((), ())), name="Embed.attend"
    )


def _dispatching(original: Any, quantized: Any, weight_attr: str) -> Any:
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(_value(getattr(self, weight_attr, None)), QArray):
            return quantized(self, *args, **kwargs)
        return original(self, *args, **kwargs)

    method.__wrapped__ = original  # type: ignore[attr-defined]
    return method


_PATCHES = (
    (nnx.Linear, "__call__", _linear, "kernel"),
    (nnx.LinearGeneral, "__call__", _linear_general, "kernel"),
    (nnx.Einsum, "__call__", _einsum, "kernel"),
    (nnx.Embed, "__call__", _embed_call, "embedding"),
    (nnx.Embed, "attend", _embed_attend, "embedding"),
)


@contextlib.contextmanager
def intercept() -> Iterator[None]:
    """Within this context, NNX layers holding QArray weights run quantized."""
    saved = [(cls, name, cls.__dict__[name]) for cls, name, _, _ in _PATCHES]
    try:
        for cls, name, fn, attr in _PATCHES:
            setattr(cls, name, _dispatching(cls.__dict__[name], fn, attr))
        yield
    finally:
        for cls, name, original in saved:
            setattr(cls, name, original)
