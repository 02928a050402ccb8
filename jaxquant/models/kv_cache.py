"""The decoder's key/value cache: a pytree of per-layer K and V buffers, float or quantized.

k, v: codes [n_layers, batch, n_kv_heads, max_len, Dp] in the spec's storage dtype (the values
themselves for a bf16/float32 cache; int8 / float8_e4m3fn / packed uint8 int4 codes otherwise,
Dp = head_dim / 2 for int4); k_scale, v_scale: float32 [n_layers, batch, n_kv_heads, G, max_len]
(one scale per token, head and group of channels; None for float caches); length: int32 scalar,
the number of positions already written (the same for every sequence of the batch). The storage
format is jaxquant.kernels.decode_attention.layouts (KVCacheSpec); all reads and writes go
through `write`, `read` and `attend`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from jax import Array

from jaxquant.errors import JaxquantError
from jaxquant.kernels.decode_attention import decode_attention
from jaxquant.kernels.decode_attention.layouts import KVCacheSpec, as_spec, quantize_rows
from jaxquant.kernels.decode_attention.reference import dequantize_cache


class _CacheShape(Protocol):
    n_layers: int
    n_kv_heads: int
    head_dim: int
    dtype: Any


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Codes k, v [n_layers, B, n_kv_heads, max_len, Dp]; k_scale, v_scale float32
    [n_layers, B, n_kv_heads, G, max_len] or None; length int32 [] (positions used);
    spec (static): the storage format."""

    k: Array
    v: Array
    k_scale: Array | None
    v_scale: Array | None
    length: Array
    spec: KVCacheSpec = dataclasses.field(metadata={"static": True})

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def nbytes(self) -> int:
        """Bytes of the stored codes and scales (the length counter excluded)."""
        leaves = (self.k, self.v, self.k_scale, self.v_scale)
        return sum(int(a.size) * a.dtype.itemsize for a in leaves if a is not None)


def init_cache(config: _CacheShape, batch: int, max_len: int, dtype: Any = None,
               kv: KVCacheSpec | str | None = None) -> KVCache:
    """An empty cache for `config` (a LlamaConfig). kv: a KVCacheSpec or a format name ("bf16",
    "int8", "fp8", "int4", "float32"); None stores floats in `dtype` (default: the config's
    compute dtype). Giving both a quantized kv and a dtype is an error."""
    if kv is not None and dtype is not None:
        raise JaxquantError("init_cache: give either dtype (a float cache) or kv (a storage "
                            "format such as 'int8'), not both")
    if max_len < 1 or batch < 1:
        raise JaxquantError(f"init_cache: batch={batch} and max_len={max_len} must be >= 1")
    spec = as_spec(kv, dtype or config.dtype)
    d = config.head_dim
    lead = (config.n_layers, batch, config.n_kv_heads)

    def codes() -> Array:
        return jnp.zeros((*lead, max_len, spec.packed_dim(d)), spec.dtype)

    def scales() -> Array | None:
        return jnp.zeros((*lead, spec.groups(d), max_len), jnp.float32) if spec.quantized else None

    # distinct buffers for k and v, so that a jitted step can donate the cache
    return KVCache(codes(), codes(), scales(), scales(), jnp.zeros((), jnp.int32), spec)


def bytes_per_token(config: _CacheShape, kv: KVCacheSpec | str | None = None) -> int:
    """Cache bytes one token takes over all layers, K and V, codes and scales."""
    spec = as_spec(kv, config.dtype)
    return spec.bytes_per_token(config.n_layers, config.n_kv_heads, config.head_dim)


def write(cache: KVCache, layer: int, k: Array, v: Array) -> KVCache:
    """Store k, v [B, T, n_kv_heads, head_dim] of `layer` at positions [length, length + T),
    quantizing each token's head (per group) on its own.

    Does not advance `length` (the model does that once per call, see `advance`)."""
    zero, pos = jnp.zeros((), jnp.int32), cache.length.astype(jnp.int32)
    at_codes = (jnp.int32(layer), zero, zero, pos, zero)  # [L, B, Hkv, S, Dp]
    at_scales = (jnp.int32(layer), zero, zero, zero, pos)  # [L, B, Hkv, G, S]

    def put(codes: Array, scales: Array | None, x: Array) -> tuple[Array, Array | None]:
        c, s = quantize_rows(jnp.swapaxes(x, 1, 2), cache.spec)  # [B, Hkv, T, Dp], [.., T, G]
        codes = jax.lax.dynamic_update_slice(codes, c[None], at_codes)
        if scales is not None:
            scales = jax.lax.dynamic_update_slice(scales, jnp.swapaxes(s, -1, -2)[None],
                                                  at_scales)
        return codes, scales

    kc, ks = put(cache.k, cache.k_scale, k)
    vc, vs = put(cache.v, cache.v_scale, v)
    return dataclasses.replace(cache, k=kc, v=vc, k_scale=ks, v_scale=vs)


def read(cache: KVCache, layer: int, dtype: Any) -> tuple[Array, Array]:
    """All max_len slots of `layer` as k, v [B, max_len, n_kv_heads, head_dim] in `dtype`
    (dequantized).

    Slots at or past length + (tokens being written) hold zeros; the caller masks them."""

    def one(codes: Array, scales: Array | None) -> Array:
        x = dequantize_cache(codes[layer], None if scales is None else scales[layer], cache.spec)
        return jnp.swapaxes(x, 1, 2).astype(dtype)

    return one(cache.k, cache.k_scale), one(cache.v, cache.v_scale)


def attend(cache: KVCache, layer: int, q: Array) -> Array:
    """Attention of one new query per sequence, q [B, n_heads, head_dim], over the first
    length + 1 positions of `layer` (call after `write` of that token) -> [B, n_heads, head_dim]
    in q.dtype. The Pallas kernel reads the stored codes on GPU; XLA elsewhere."""
    lengths = jnp.broadcast_to(cache.length.astype(jnp.int32) + 1, (q.shape[0],))
    return decode_attention(q, cache.k, cache.v, lengths, spec=cache.spec, k_scale=cache.k_scale,
                            v_scale=cache.v_scale, layer=layer)


def advance(cache: KVCache, n: int) -> KVCache:
    """The same cache with `n` more positions marked as used."""
    return dataclasses.replace(cache, length=cache.length + jnp.int32(n))


def check_capacity(cache: KVCache, new_tokens: int) -> None:
    """Raise when writing `new_tokens` would run past max_len (checked only when concrete)."""
    try:
        used = int(cache.length)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError):
        return  # traced: the caller checks before jit
    if used + new_tokens > cache.max_len:
        raise JaxquantError(
            f"KV cache holds {cache.max_len} positions; {used} used + {new_tokens} new exceeds "
            "it. Allocate a longer cache (init_cache(..., max_len=...))"
        )
