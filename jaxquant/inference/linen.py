"""Quantized forward for Flax Linen models by method interception.

Why interception: Linen's own layers cannot take a QArray kernel (`promote_dtype` converts it
to an array, and `self.param` checks the stored shape against the logical one). Wrapping the
model's call in `nn.intercept_methods` lets every `nn.Dense`, `nn.DenseGeneral`, `nn.Einsum` and
`nn.Embed` whose weight is a QArray route its matmul to `quantized_dot_general`, with no edit
to the model and no global patching of jax: layers with float weights run unchanged.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from jaxquant.core.qarray import QArray
from jaxquant.errors import JaxquantError
from jaxquant.inference.einsum_dims import einsum_dimension_numbers
from jaxquant.inference.embedding import take_rows
from jaxquant.inference.qdot import quantized_dot_general


def _param(module: nn.Module, name: str) -> Any:
    scope = module.scope
    if scope is None or not scope.has_variable("params", name):
        return None
    return scope.get_variable("params", name)


def _out_dtype(module: nn.Module, x: Any, *params: Any) -> Any:
    if getattr(module, "dtype", None) is not None:
        return module.dtype
    dts = [p.dtype for p in params if p is not None]
    return jnp.result_type(x.dtype, *dts)


def _layer_name(module: nn.Module) -> str:
    return "/".join(module.path)


def _dense(module: nn.Dense, kernel: QArray, x: Any) -> Any:
    bias = _param(module, "bias") if module.use_bias else None
    dtype = _out_dtype(module, x, kernel, bias)
    y = quantized_dot_general(
        x.astype(dtype), kernel, (((x.ndim - 1,), (0,)), ((), ())),
        precision=module.precision, name=_layer_name(module),
    )
    return y + bias.astype(dtype) if bias is not None else y


def _dense_general(module: nn.DenseGeneral, kernel: QArray, x: Any) -> Any:
    if module.batch_dims:
        raise JaxquantError(
            f"{_layer_name(module)}: quantized DenseGeneral with batch_dims is not supported; "
            "add this layer to the recipe's ignore list"
        )
    axis = module.axis if isinstance(module.axis, tuple) else (module.axis,)
    axis = tuple(a % x.ndim for a in axis)
    bias = _param(module, "bias") if module.use_bias else None
    dtype = _out_dtype(module, x, kernel, bias)
    dims = ((axis, tuple(range(len(axis)))), ((), ()))
    y = quantized_dot_general(
        x.astype(dtype), kernel, dims, precision=module.precision, name=_layer_name(module)
    )
    return y + bias.astype(dtype) if bias is not None else y


def _einsum(module: nn.Einsum, kernel: QArray, x: Any, einsum_str: str | None = None) -> Any:
    spec = (einsum_str or module.einsum_str).replace(" ", "")
    dims, perm = einsum_dimension_numbers(spec, x.ndim, kernel.ndim)
    bias = _param(module, "bias") if module.use_bias else None
    dtype = _out_dtype(module, x, kernel, bias)
    y = quantized_dot_general(
        x.astype(dtype), kernel, dims, precision=module.precision, name=_layer_name(module)
    ).transpose(perm)
    if bias is not None:
        out_str = spec.split("->")[1]
        w_str = spec.split("->")[0].split(",")[1]
        shape = [kernel.shape[w_str.index(c)] if c in w_str else 1 for c in out_str]
        y = y + bias.astype(dtype).reshape(shape)
    return y


def _embed_call(module: nn.Embed, table: QArray, ids: Any) -> Any:
    dtype = module.dtype or table.dtype
    return take_rows(table, ids, dtype)


def _embed_attend(module: nn.Embed, table: QArray, query: Any) -> Any:
    dtype = _out_dtype(module, query, table)
    return quantized_dot_general(
        query.astype(dtype), table, (((query.ndim - 1,), (1,)), ((), ())),
        name=_layer_name(module) + "/attend",
    )


def interceptor(next_fun, args, kwargs, context):
    """nn.intercept_methods hook: quantized layers go to the quantized dot, others run as is."""
    module, method = context.module, context.method_name
    if isinstance(module, nn.Embed):
        table = _param(module, "embedding")
        if isinstance(table, QArray):
            if method == "setup":  # its self.param would check the packed shape; nothing to set up
                return None
            if method == "__call__":
                return _embed_call(module, table, *args, **kwargs)
            if method == "attend":
                return _embed_attend(module, table, *args, **kwargs)
        return next_fun(*args, **kwargs)
    if method != "__call__" or not isinstance(module, (nn.Dense, nn.DenseGeneral, nn.Einsum)):
        return next_fun(*args, **kwargs)
    kernel = _param(module, "kernel")
    if not isinstance(kernel, QArray):
        return next_fun(*args, **kwargs)
    if isinstance(module, nn.Dense):
        return _dense(module, kernel, *args, **kwargs)
    if isinstance(module, nn.DenseGeneral):
        return _dense_general(module, kernel, *args, **kwargs)
    return _einsum(module, kernel, *args, **kwargs)


def apply(module: nn.Module, variables: Any, *args: Any, **kwargs: Any) -> Any:
    """module.apply(variables, ...) where QArray weights run through the quantized dot."""
    with nn.intercept_methods(interceptor):
        return module.apply(variables, *args, **kwargs)
