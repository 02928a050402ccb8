"""Decode attention over a (quantized) KV cache in plain XLA: the semantics every kernel is
checked against, and the `implementation="xla"` path.

  K, V    = dequantize(codes, scales)                    (float32; layouts.dequantize_rows)
  s[h, t] = (q[h] . K[t]) * sm_scale                     for t < length, float32
  out[h]  = sum_t softmax(s[h])[t] * V[t]                (zeros for an empty cache)
Query head h reads KV head h // (H / Hkv) (grouped-query attention). Positions at or past the
length are never read: whatever they hold (zeros, stale codes, NaN) does not reach the output.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxquant.kernels.decode_attention.layouts import KVCacheSpec, dequantize_rows


def dequantize_cache(codes: jax.Array, scales: jax.Array | None, spec: KVCacheSpec) -> jax.Array:
    """codes [..., S, Dp], scales [..., G, S] (or None) -> float32 [..., S, D]."""
    return dequantize_rows(codes, None if scales is None else jnp.swapaxes(scales, -1, -2), spec)


def decode_attention_reference(q: jax.Array, k: jax.Array, v: jax.Array, lengths: jax.Array,
                               k_scale: jax.Array | None = None, v_scale: jax.Array | None = None,
                               *, spec: KVCacheSpec, sm_scale: float) -> jax.Array:
    """q [B, H, D]; k, v codes [B, Hkv, S, Dp]; scales [B, Hkv, G, S]; lengths int [B]
    -> [B, H, D] in q.dtype."""
    B, H, D = q.shape
    kf, vf = dequantize_cache(k, k_scale, spec), dequantize_cache(v, v_scale, spec)
    Hkv, S = kf.shape[1], kf.shape[2]
    valid = (jnp.arange(S)[None, :] < lengths[:, None])[:, None, None, :]  # [B, 1, 1, S]
    qg = q.reshape(B, Hkv, H // Hkv, D).astype(jnp.float32)
    s = jnp.einsum("bkgd,bksd->bkgs", qg, kf, precision=jax.lax.Precision.HIGHEST) * sm_scale
    m = jnp.max(jnp.where(valid, s, -jnp.inf), axis=-1, keepdims=True)
    m = jnp.where(jnp.isneginf(m), 0.0, m)
    p = jnp.where(valid, jnp.exp(s - m), 0.0)
    vf = jnp.where(valid[:, 0, :, :, None], vf, 0.0)  # [B, 1, S, 1]
    l = jnp.sum(p, axis=-1, keepdims=True)
    out = jnp.einsum("bkgs,bksd->bkgd", p, vf, precision=jax.lax.Precision.HIGHEST)
    out = out / jnp.where(l > 0, l, 1.0)
    return out.reshape(B, H, D).astype(q.dtype)
