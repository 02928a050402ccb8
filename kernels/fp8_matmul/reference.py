"""FP8 W8A8 semantics in plain XLA (the reference and the `implementation="xla"` path).

  sx[m]   = max(|x[m, :]|) / 448 in float32 (1 where the row is all zero)
  xq      = float8_e4m3fn(clip(x / sx, -448, 448))        (round to nearest even)
  out     = bf16( (xq @ wq accumulated in float32) * sx[:, None] * sw[None, :] )
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

from jaxquant.kernels.fp8_matmul.layouts import E4M3_MAX, LAYOUT_KN, Fp8Weights


def quantize_per_token(x: Array) -> tuple[Array, Array]:
    """x [M, K] -> (xq float8_e4m3fn [M, K], sx float32 [M])."""
    xf = x.astype(jnp.float32)
    amax = jnp.max(jnp.abs(xf), axis=-1)
    sx = amax / E4M3_MAX
    sx = jnp.where(sx > 0, sx, 1.0)
    xq = jnp.clip(xf / sx[:, None], -E4M3_MAX, E4M3_MAX).astype(jnp.float8_e4m3fn)
    return xq, sx


def fp8_matmul_reference(x: Array, w: Fp8Weights, *, out_dtype=jnp.bfloat16, gemm_out=jnp.float32) -> Array:
    """gemm_out: dtype of XLA's FP8 GEMM result before the scaling epilogue. float32 (the
    exact reference) or bfloat16 (the GEMM still accumulates in float32 inside cuBLASLt, but
    writes half the bytes; one extra bf16 rounding before the scales)."""
    xq, sx = quantize_per_token(x)
    wq = w.qvalue if w.layout == LAYOUT_KN else w.qvalue.T
    acc = jnp.dot(xq, wq, preferred_element_type=gemm_out).astype(jnp.float32)
    sw = w.scale.reshape(-1).astype(jnp.float32)
    return (acc * sx[:, None] * sw[None, :]).astype(out_dtype)


def fp8_per_tensor_xla(x: Array, w: Fp8Weights, sw_tensor: Array, *, out_dtype=jnp.bfloat16) -> Array:
    """XLA's own fp8 path (per-tensor scalar scales, dynamic activation scale) on the same
    weight layout: the baseline `xla_format_us` of the benchmark."""
    xf = x.astype(jnp.float32)
    sx = jnp.max(jnp.abs(xf)) / E4M3_MAX
    sx = jnp.where(sx > 0, sx, 1.0)
    xq = (xf / sx).astype(jnp.float8_e4m3fn)
    wq = w.qvalue if w.layout == LAYOUT_KN else w.qvalue.T
    acc = jnp.dot(xq, wq, preferred_element_type=jnp.float32)
    return (acc * (sx * sw_tensor)).astype(out_dtype)
