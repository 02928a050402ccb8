"""The decoder's key/value cache: a pytree of per-layer K and V buffers.

k, v: [n_layers, batch, max_len, n_kv_heads, head_dim] in the cache dtype; length: int32 scalar,
the number of positions already written (the same for every sequence of the batch). All reads and
writes go through `write` and `read`, so that other storage (quantized caches) can plug in here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from jax import Array

from jaxquant.errors import JaxquantError


class _CacheShape(Protocol):
    n_layers: int
    n_kv_heads: int
    head_dim: int
    dtype: Any


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """k, v [n_layers, B, max_len, n_kv_heads, head_dim]; length int32 [] (positions used)."""

    k: Array
    v: Array
    length: Array

    @property
    def max_len(self) -> int:
        return self.k.shape[2]


def init_cache(config: _CacheShape, batch: int, max_len: int, dtype: Any = None) -> KVCache:
    """An empty cache for `config` (a LlamaConfig); dtype defaults to the config's compute dtype."""
    shape = (config.n_layers, batch, max_len, config.n_kv_heads, config.head_dim)
    dtype = dtype or config.dtype
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32))


def write(cache: KVCache, layer: int, k: Array, v: Array) -> KVCache:
    """Store k, v [B, T, n_kv_heads, head_dim] of `layer` at positions [length, length + T).

    Does not advance `length` (the model does that once per call, see `advance`)."""
    zero = jnp.zeros((), jnp.int32)
    start = (jnp.int32(layer), zero, cache.length.astype(jnp.int32), zero, zero)
    return KVCache(
        jax.lax.dynamic_update_slice(cache.k, k[None].astype(cache.k.dtype), start),
        jax.lax.dynamic_update_slice(cache.v, v[None].astype(cache.v.dtype), start),
        cache.length,
    )


def read(cache: KVCache, layer: int, dtype: Any) -> tuple[Array, Array]:
    """All max_len slots of `layer` as k, v [B, max_len, n_kv_heads, head_dim] in `dtype`.

    Slots at or past length + (tokens being written) hold zeros; the caller masks them."""
    return cache.k[layer].astype(dtype), cache.v[layer].astype(dtype)


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
