"""W4A16 semantics in plain XLA: unpack, dequantize, dot (the reference every kernel is
checked against, and the `implementation="xla"` path).

Dequantization follows jaxquant's convention: (decode(code) - zero_point) * scale computed
in float32, then cast to the activation dtype (bf16); the dot accumulates in float32.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array, lax

from jaxquant.kernels.w4a16.layouts import LAYOUT_NK, Int4Weights


def unpack_codes(qvalue: Array, k: int) -> Array:
    """uint8 [ceil(K/2), N] -> uint8 codes [K, N] (even k from the low nibble)."""
    lo = qvalue & 0xF
    hi = qvalue >> 4
    codes = jnp.stack([lo, hi], axis=1).reshape(2 * qvalue.shape[0], qvalue.shape[1])
    return codes[:k]


def dequantize(w: Int4Weights, k: int, group_size: int, dtype=jnp.bfloat16) -> Array:
    """Int4Weights (canonical or "nk" layout) -> W [K, N] in `dtype`."""
    gidx = jnp.arange(k) // group_size
    if w.layout == LAYOUT_NK:  # signed values [N, K]; zero points already minus 8
        vals = w.qvalue.T.astype(jnp.float32)
        if w.zero_point is not None:
            vals = vals - w.zero_point.astype(jnp.float32)[gidx]
        return (vals * w.scale.astype(jnp.float32)[gidx]).astype(dtype)
    codes = unpack_codes(w.qvalue, k).astype(jnp.int32)
    if w.zero_point is None:
        vals = jnp.where(codes >= 8, codes - 16, codes)
    else:
        vals = codes - w.zero_point.astype(jnp.int32)[gidx]
    scale = w.scale.astype(jnp.float32)[gidx]
    return (vals.astype(jnp.float32) * scale).astype(dtype)


def dequantize_nk_t(w: Int4Weights, group_size: int, dtype=jnp.bfloat16) -> Array:
    """Layout "nk" -> W^T [N, K] in `dtype` (elementwise: no transpose of the weights)."""
    n, k = w.qvalue.shape
    gidx = jnp.arange(k) // group_size
    vals = w.qvalue.astype(jnp.float32)
    if w.zero_point is not None:
        vals = vals - w.zero_point.astype(jnp.float32).T[:, gidx]
    return (vals * w.scale.astype(jnp.float32).T[:, gidx]).astype(dtype)


def w4a16_matmul_reference(x: Array, w: Int4Weights, *, group_size: int) -> Array:
    """x [M, K] bf16 @ dequantize(w) -> [M, N] bf16, float32 accumulation. Layout "nk" runs
    a transposed-operand dot on W^T (one elementwise dequantization pass, then cuBLAS)."""
    k = x.shape[-1]
    if w.layout == LAYOUT_NK:
        wt = dequantize_nk_t(w, group_size, x.dtype)
        out = lax.dot_general(x, wt, (((x.ndim - 1,), (1,)), ((), ())),
                              preferred_element_type=jnp.float32)
        return out.astype(x.dtype)
    wd = dequantize(w, k, group_size, x.dtype)
    return jnp.dot(x, wd, preferred_element_type=jnp.float32).astype(x.dtype)
