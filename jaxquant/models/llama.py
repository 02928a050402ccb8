"""A Llama-family decoder in Flax Linen (RMSNorm, RoPE, grouped-query attention, SwiGLU).

Every matmul is a standard Linen layer (nn.Dense, nn.Embed) so jaxquant.intercept() can route
quantized weights without edits. Parameter paths:
    params/embed/embedding                         [vocab, d]
    params/layers_{i}/input_norm/scale             [d]
    params/layers_{i}/attn/{q,k,v,o}_proj/kernel   [in, out] (HF rotate-half RoPE layout)
    params/layers_{i}/post_attn_norm/scale         [d]
    params/layers_{i}/mlp/{gate,up,down}_proj/kernel
    params/final_norm/scale, params/lm_head/kernel (untied heads only)
With LlamaConfig.fused_projections, q/k/v become one layer attn/qkv_proj ([d, (H + 2 Hkv) D],
columns q | k | v) and gate/up one layer mlp/gate_up_proj ([d, 2 F], columns gate | up):
fewer, wider matmuls per block, which is what decoding wants (fuse_projections converts a
tree; per-output-column and group-along-K quantization give the same codes either way).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import Array

from jaxquant.core.qarray import is_qarray
from jaxquant.errors import JaxquantError
from jaxquant.models import kv_cache
from jaxquant.models.attention import causal_attention, masked_attention
from jaxquant.models.kv_cache import KVCache


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Hyperparameters of a Llama-family decoder; `dtype` is the compute dtype (params stay f32)."""

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
    fused_projections: bool = False  # one qkv_proj and one gate_up_proj per block

    def __post_init__(self) -> None:
        if self.n_heads % self.n_kv_heads:
            raise JaxquantError(f"n_heads={self.n_heads} must be a multiple of "
                             f"n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise JaxquantError(f"head_dim={self.head_dim} must be even for RoPE")


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * scale, computed in float32; x [..., d]."""

    eps: float

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * scale).astype(x.dtype)


def rope(x: Array, positions: Array, theta: float) -> Array:
    """HF rotate-half RoPE: x [B, T, H, D], positions int [B, T] -> [B, T, H, D] in x.dtype."""
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, D/2]
    cos = jnp.cos(jnp.concatenate([angles, angles], -1))[:, :, None, :]
    sin = jnp.sin(jnp.concatenate([angles, angles], -1))[:, :, None, :]
    x32 = x.astype(jnp.float32)
    rotated = jnp.concatenate([-x32[..., d // 2:], x32[..., : d // 2]], -1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


class Attention(nn.Module):
    """Grouped-query causal self-attention; x [B, T, d] -> ([B, T, d], cache)."""

    cfg: LlamaConfig
    layer: int

    @nn.compact
    def __call__(self, x: Array, positions: Array, cache: KVCache | None):
        c = self.cfg
        b, t, _ = x.shape
        dense = lambda n, name: nn.Dense(n, use_bias=False, dtype=c.dtype, name=name)  # noqa: E731
        nq, nkv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
        if c.fused_projections:
            q, k, v = jnp.split(dense(nq + 2 * nkv, "qkv_proj")(x), (nq, nq + nkv), axis=-1)
        else:
            q, k, v = dense(nq, "q_proj")(x), dense(nkv, "k_proj")(x), dense(nkv, "v_proj")(x)
        q = q.reshape(b, t, c.n_heads, c.head_dim)
        k = k.reshape(b, t, c.n_kv_heads, c.head_dim)
        v = v.reshape(b, t, c.n_kv_heads, c.head_dim)
        q, k = rope(q, positions, c.rope_theta), rope(k, positions, c.rope_theta)
        # Causality is by slot: query i (slot start + i) sees keys in slots <= start + i.
        if cache is not None:
            cache = kv_cache.write(cache, self.layer, k, v)
            if t == 1:  # decoding: attention reads the stored (possibly quantized) cache itself
                out = kv_cache.attend(cache, self.layer, q[:, 0]).reshape(b, 1, -1)
                return dense(c.d_model, "o_proj")(out.astype(c.dtype)), cache
            k, v = kv_cache.read(cache, self.layer, c.dtype)
            q_slot = cache.length + jnp.arange(t, dtype=jnp.int32)
        qg = q.reshape(b, t, c.n_kv_heads, c.n_heads // c.n_kv_heads, c.head_dim)
        out = (causal_attention(qg, k, v) if cache is None
               else masked_attention(qg, k, v, q_slot))
        out = out.reshape(b, t, c.n_heads * c.head_dim).astype(c.dtype)
        return dense(c.d_model, "o_proj")(out), cache


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)); x [B, T, d] -> [B, T, d]."""

    cfg: LlamaConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.cfg
        dense = lambda n, name: nn.Dense(n, use_bias=False, dtype=c.dtype, name=name)  # noqa: E731
        if c.fused_projections:
            gate, up = jnp.split(dense(2 * c.ffn_dim, "gate_up_proj")(x), 2, axis=-1)
        else:
            gate, up = dense(c.ffn_dim, "gate_proj")(x), dense(c.ffn_dim, "up_proj")(x)
        h = jax.nn.silu(gate) * up
        return dense(c.d_model, "down_proj")(h)


class DecoderLayer(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(x))."""

    cfg: LlamaConfig
    layer: int

    @nn.compact
    def __call__(self, x: Array, positions: Array, cache: KVCache | None):
        h, cache = Attention(self.cfg, self.layer, name="attn")(
            RMSNorm(self.cfg.rms_eps, name="input_norm")(x), positions, cache
        )
        x = x + h
        x = x + MLP(self.cfg, name="mlp")(RMSNorm(self.cfg.rms_eps, name="post_attn_norm")(x))
        return x, cache


class Llama(nn.Module):
    """tokens int32 [B, T] -> (logits f32 [B, T, vocab], updated cache or None).

    positions (int32 [B, T], RoPE only) default to arange(T), offset by cache.length when a
    cache is given. With a cache, the T new keys/values are written at slots
    [length, length + T) and the returned cache has length + T.
    """

    cfg: LlamaConfig

    @nn.compact
    def __call__(self, tokens: Array, positions: Array | None = None,
                 cache: KVCache | None = None):
        c = self.cfg
        b, t = tokens.shape
        if cache is not None:
            kv_cache.check_capacity(cache, t)
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

    def init_cache(self, batch: int, max_len: int, dtype: Any = None,
                   kv: Any = None) -> KVCache:
        """An empty KVCache for this model; kv: a storage format ("bf16", "int8", "fp8",
        "int4") or KVCacheSpec (see jaxquant.models.kv_cache.init_cache)."""
        return kv_cache.init_cache(self.cfg, batch, max_len, dtype, kv)


_FUSED = (("attn", "qkv_proj", ("q_proj", "k_proj", "v_proj")),
          ("mlp", "gate_up_proj", ("gate_proj", "up_proj")))


def fuse_projections(params: dict[str, Any]) -> dict[str, Any]:
    """A float {"params": ...} tree of an unfused Llama -> the tree of the same model with
    LlamaConfig.fused_projections (kernels concatenated along the output axis). Quantize after
    fusing: per-column and group-along-K schemes give the same codes as on the parts."""
    inner = dict(params["params"])
    for name, block in inner.items():
        if not name.startswith("layers_"):
            continue
        block = {k: dict(v) for k, v in block.items()}
        for sub, fused, parts in _FUSED:
            mods = block[sub]
            if fused in mods:
                raise JaxquantError(f"{name}/{sub} is already fused ({fused} present)")
            missing = [p for p in parts if p not in mods]
            if missing:
                raise JaxquantError(f"{name}/{sub}: no {', '.join(missing)} to fuse")
            kernels = [mods.pop(p)["kernel"] for p in parts]
            if any(is_qarray(k) for k in kernels):
                raise JaxquantError(f"{name}/{sub}: fuse_projections takes float kernels; fuse "
                                    "before quantizing")
            mods[fused] = {"kernel": jnp.concatenate(kernels, axis=1)}
        inner[name] = block
    return {**params, "params": inner}
