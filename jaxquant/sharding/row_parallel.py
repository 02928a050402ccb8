"""The dot of a row-parallel layer inside shard_map: each device holds rows [K_local, N] of the
weight and the matching slice of the activations; partial products are summed with psum.

W8A8 needs one more reduction: a dynamic activation scale is the amax over the *whole*
contraction axis, so the local amax is combined with pmax before quantizing; the int8 x int8
partial products are then summed exactly in int32, and the result equals the one-device dot bit
for bit.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax import Array, lax

from jaxquant.core.qarray import QArray
from jaxquant.formats.integer import IntCodec
from jaxquant.formats.registry import get_format
from jaxquant.inference import dispatch
from jaxquant.inference.qdot import _weight_values, quantized_dot_general
from jaxquant.sharding.specs import ShardingError


def global_activation_scale(x: Array, w: QArray, axis_name: str) -> Array:
    """f32 scale of x [..., K_local] as one device would compute it on the full K: per token
    [..., 1] or per tensor (1, ..., 1); static calibrated scales are already global."""
    spec = w.meta.activation
    if not spec.dynamic and w.input_scale is not None:
        return jnp.asarray(w.input_scale, jnp.float32).reshape((1,) * x.ndim)
    axes = (x.ndim - 1,) if spec.granularity == "token" else tuple(range(x.ndim))
    amax = lax.pmax(jnp.max(jnp.abs(x.astype(jnp.float32)), axis=axes, keepdims=True),
                    axis_name)
    s = amax / get_format(spec.format).codec.qmax
    return jnp.where((s > 0) & jnp.isfinite(s), s, 1.0)


def _low_precision_row_dot(x: Array, w: QArray, axis_name: str, out_dtype: Any) -> Array:
    if w.meta.grid[0] > 1:
        raise ShardingError(
            f"row-parallel W8A8 takes per-channel weight scales; this {w.format} weight has "
            f"{w.meta.grid[0]} groups along K. Quantize it per channel, or run the model under "
            "jax.jit with NamedShardings instead of shard_map"
        )
    spec = w.meta.activation
    s = global_activation_scale(x, w, axis_name)
    y = x.astype(jnp.float32) / s
    codec = get_format(spec.format).codec
    if isinstance(codec, IntCodec):
        xq = codec.round_clip(y).astype(jnp.int8)
    else:
        xq = codec.encode(y)
    acc_dtype = jnp.int32 if xq.dtype == jnp.int8 else jnp.float32
    dims = (((x.ndim - 1,), (0,)), ((), ()))
    acc = lax.psum(lax.dot_general(xq, _weight_values(w), dims, preferred_element_type=acc_dtype),
                   axis_name)
    return (acc.astype(jnp.float32) * s * w.block_scale()[0]).astype(out_dtype)


def row_parallel_dot(x: Array, w: QArray | Array, axis_name: str, out_dtype: Any,
                     name: str = "") -> Array:
    """sum over devices of `axis_name` of x [..., K_local] @ w [K_local, N] -> [..., N] in
    out_dtype, replicated. w: this device's rows (a localized QArray or a float array). Weight-only
    and float weights run the local dot as quantized_dot_general would (Pallas kernel included)."""
    low = (isinstance(w, QArray) and w.meta.activation is not None
           and dispatch.current().allow_low_precision)
    if not low:
        if not isinstance(w, QArray):
            w = w.astype(x.dtype)
        y = quantized_dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), out_dtype=out_dtype,
                                  name=name)
        return lax.psum(y, axis_name)
    if w.input_smooth is not None:
        x = (x.astype(jnp.float32) / w.input_smooth).astype(x.dtype)
    dispatch.record(name, w, f"w8a8-{w.meta.activation.format}-row-parallel")
    return _low_precision_row_dot(x, w, axis_name, out_dtype)


