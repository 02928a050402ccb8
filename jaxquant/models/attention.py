"""Grouped-query softmax attention over full (non-cached) sequences, in f32.

Queries [B, T, Hkv, G, D] (G query heads per key/value head), keys and values [B, S, Hkv, D].
`masked_attention` takes query slots and masks keys by slot; `causal_attention` is the same
math for a causal prefill from slot 0 (S = T), computed in query chunks that each read only the
keys at or before them: about half the flops and exponentials of the masked form and, with the
G heads of a key/value head stacked into one matmul, about 3x faster on CPU at T = 512.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import Array

CHUNK = 128  # queries per chunk (more chunks when T > MAX_CHUNKS * CHUNK)
MAX_CHUNKS = 16  # bounds the unrolled program for long sequences


def _softmax_pv(scores: Array, allowed: Array, v: Array) -> Array:
    """scores [B, Hkv, G, Tq, S] f32, allowed [Tq, S] bool, v [B, Hkv, S, D] -> [B, Hkv, G, Tq, D]."""
    b, h, g, tq, s = scores.shape
    probs = jax.nn.softmax(jnp.where(allowed, scores, jnp.finfo(jnp.float32).min), axis=-1)
    out = jnp.einsum("bkqs,bksd->bkqd", probs.reshape(b, h, g * tq, s), v)
    return out.reshape(b, h, g, tq, v.shape[-1])


def _scores(q: Array, k: Array, scale: float) -> Array:
    """q [B, Hkv, G, Tq, D], k [B, Hkv, S, D] -> scale * q k^T [B, Hkv, G, Tq, S]."""
    b, h, g, tq, d = q.shape
    s = jnp.einsum("bkqd,bksd->bkqs", q.reshape(b, h, g * tq, d), k)
    return s.reshape(b, h, g, tq, k.shape[2]) * scale


def masked_attention(q: Array, k: Array, v: Array, q_slot: Array) -> Array:
    """q [B, T, Hkv, G, D], k/v [B, S, Hkv, D], q_slot int32 [T]: query t sees keys s <= q_slot[t].
    Returns f32 [B, T, Hkv, G, D]."""
    q, k, v = _heads_first(q, k, v)
    allowed = jnp.arange(k.shape[2], dtype=jnp.int32)[None, :] <= q_slot[:, None]
    out = _softmax_pv(_scores(q, k, 1.0 / math.sqrt(q.shape[-1])), allowed, v)
    return out.transpose(0, 3, 1, 2, 4)


def causal_attention(q: Array, k: Array, v: Array) -> Array:
    """masked_attention with q_slot = arange(T) and S = T, in causal chunks of queries.
    q [B, T, Hkv, G, D], k/v [B, T, Hkv, D] -> f32 [B, T, Hkv, G, D]."""
    q, k, v = _heads_first(q, k, v)
    t = q.shape[3]
    chunk = max(CHUNK, -(-t // MAX_CHUNKS))
    scale = 1.0 / math.sqrt(q.shape[-1])
    outs = []
    for start in range(0, t, chunk):
        end = min(t, start + chunk)
        allowed = (jnp.arange(end, dtype=jnp.int32)[None, :]
                   <= jnp.arange(start, end, dtype=jnp.int32)[:, None])
        scores = _scores(q[:, :, :, start:end], k[:, :, :end], scale)
        outs.append(_softmax_pv(scores, allowed, v[:, :, :end]))
    return jnp.concatenate(outs, axis=3).transpose(0, 3, 1, 2, 4)


def _heads_first(q: Array, k: Array, v: Array) -> tuple[Array, Array, Array]:
    """f32 q [B, Hkv, G, T, D], k/v [B, Hkv, S, D] from the [B, T, ...] layouts."""
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
    return (f32(q).transpose(0, 2, 3, 1, 4), f32(k).transpose(0, 2, 1, 3),
            f32(v).transpose(0, 2, 1, 3))
