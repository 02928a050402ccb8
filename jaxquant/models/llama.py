"""A Llama-family decoder in Flax Linen (RMSNorm, RoPE, grouped-query attention, SwiGLU).

Every matmul is a standard Linen layer (nn.Dense, nn.Embed) so jaxquant.intercept() can route
quantized weights without edits. Parameter paths:
    params/embed/embedding                         [vocab, d]
    params/layers_{i}/input_norm/scale             [d]
    params/layers_{i}/attn/{q,k,v,o}_proj/kernel   [in, out] (HF rotate-half RoPE layout)
    params/layers_{i}/post_attn_norm/scale         [d]
    params/layers_{i}/mlp/{gate,up,down}_proj/kernel
    params/final_norm/scale, params/lm_head/kernel (untied heads only)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import Array

from jaxquant.models import kv_cache
from jaxquant.models.kv_cache import KVCache


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    tie_embeddings: bool = True
    max_seq_len: int = 2048
    dtype: Any = jnp.float32  # compute dtype

    def __post_init__(self) -> None:
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of "
                             f"n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")


class RMSNorm(nn.Module):
    eps: float

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * scale).astype(x.dtype)


def rope(x: Array, positions: Array, theta: float) -> Array:
    """Rotate-half RoPE. x [B, T, H, D], positions int [B, T]."""
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, D/2]
    cos = jnp.cos(jnp.concatenate([angles, angles], -1))[:, :, None, :]
    sin = jnp.sin(jnp.concatenate([angles, angles], -1))[:, :, None, :]
    x32 = x.astype(jnp.float32)
    rotated = jnp.concatenate([-x32[..., d // 2:], x32[..., : d // 2]], -1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


class Attention(nn.Module):
    cfg: LlamaConfig

    @nn.compact
    def __call__(self, x: Array, positions: Array, cache: KVCache | None, layer: int):
        c = self.cfg
        b, t, _ = x.shape
        dense = lambda n, name: nn.Dense(n, use_bias=False, dtype=c.dtype, name=name)  # noqa: E731
        q = dense(c.n_heads * c.head_dim, "q_proj")(x).reshape(b, t, c.n_heads, c.head_dim)
        k = dense(c.n_kv_heads * c.head_dim, "k_proj")(x).reshape(b, t, c.n_kv_heads, c.head_dim)
        v = dense(c.n_kv_heads * c.head_dim, "v_proj")(x).reshape(b, t, c.n_kv_heads, c.head_dim)
        q, k = rope(q, positions, c.rope_theta), rope(k, positions, c.rope_theta)
        if cache is not None:
            cache = kv_cache.write(cache, layer, k, v)
            k, v = kv_cache.read(cache, layer, c.dtype)
            key_pos = jnp.arange(cache.max_len)[None, :]
            valid = key_pos < cache.length + t
            mask = (key_pos[None] <= positions[:, :, None]) & valid[:, None, :]
        else:
            mask = positions[:, None, :] <= positions[:, :, None]  # [B, Tq, Tk]
        group = c.n_heads // c.n_kv_heads
        qg = q.reshape(b, t, c.n_kv_heads, group, c.head_dim).astype(jnp.float32)
        scores = jnp.einsum("btkgd,bskd->bkgts", qg, k.astype(jnp.float32))
        scores = scores / jnp.sqrt(jnp.float32(c.head_dim))
        scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1)
        out = jnp.einsum("bkgts,bskd->btkgd", probs, v.astype(jnp.float32))
        out = out.reshape(b, t, c.n_heads * c.head_dim).astype(c.dtype)
        return dense(c.d_model, "o_proj")(out), cache


class MLP(nn.Module):
    cfg: LlamaConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.cfg
        dense = lambda n, name: nn.Dense(n, use_bias=False, dtype=c.dtype, name=name)  # noqa: E731
        h = jax.nn.silu(dense(c.ffn_dim, "gate_proj")(x)) * dense(c.ffn_dim, "up_proj")(x)
        return dense(c.d_model, "down_proj")(h)


class DecoderLayer(nn.Module):
    cfg: LlamaConfig
    layer: int

    @nn.compact
    def __call__(self, x: Array, positions: Array, cache: KVCache | None):
        h, cache = Attention(self.cfg, name="attn")(
            RMSNorm(self.cfg.rms_eps, name="input_norm")(x), positions, cache, self.layer
        )
        x = x + h
        x = x + MLP(self.cfg, name="mlp")(RMSNorm(self.cfg.rms_eps, name="post_attn_norm")(x))
        return x, cache


class Llama(nn.Module):
    """tokens int32 [B, T] -> (logits f32 [B, T, vocab], updated cache or None).

    positions default to arange(T) (offset by cache.length when a cache is given).
    """

    cfg: LlamaConfig

    @nn.compact
    def __call__(self, tokens: Array, positions: Array | None = None,
                 cache: KVCache | None = None):
        c = self.cfg
        b, t = tokens.shape
        if positions is None:
            start = cache.length if cache is not None else 0
            positions = jnp.broadcast_to(start + jnp.arange(t, dtype=jnp.int32), (b, t))
        embed = nn.Embed(c.vocab_size, c.d_model, dtype=c.dtype, name="embed")
        x = embed(tokens)
        for i in range(c.n_layers):
            x, cache = DecoderLayer(c, i, name=f"layers_{i}")(x, positions, cache)
        x = RMSNorm(c.rms_eps, name="final_norm")(x)
        if c.tie_embeddings:
            logits = embed.attend(x)
        else:
            logits = nn.Dense(c.vocab_size, use_bias=False, dtype=c.dtype, name="lm_head")(x)
        if cache is not None:
            cache = kv_cache.advance(cache, t)
        return logits.astype(jnp.float32), cache

    def init_cache(self, batch: int, max_len: int, dtype: Any = None) -> KVCache:
        c = self.cfg
        return kv_cache.init_cache(c.n_layers, batch, max_len, c.n_kv_heads, c.head_dim,
                                   dtype or c.dtype)
