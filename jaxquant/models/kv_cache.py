"""The decoder's key/value cache: a pytree of per-layer K and V buffers.

k, v: [n_layers, batch, max_len, n_kv_heads, head_dim] in the cache dtype; length: int32 scalar,
the number of positions already written (the same for every sequence of the batch). Reads and
writes go through `write` and `read` so that other storage (quantized caches) can plug in here.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import Array

from jaxquant.errors import JaxquantError


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    k: Array
    v: Array
    length: Array

    @property
    def max_len(self) -> int:
        return self.k.shape[2]


def init_cache(n_layers: int, batch: int, max_len: int, n_kv_heads: int, head_dim: int,
               dtype=jnp.float32) -> KVCache:
    shape = (n_layers, batch, max_len, n_kv_heads, head_dim)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.int32(0))


def write(cache: KVCache, layer: int, k: Array, v: Array) -> KVCache:
    """Store k, v [batch, T, n_kv_heads, head_dim] of `layer` at positions [length, length + T).
    Does not advance `length` (see `advance`)."""
    start = (layer, 0, cache.length, 0, 0)
    return KVCache(
        jax.lax.dynamic_update_slice(cache.k, k[None].astype(cache.k.dtype), start),
        jax.lax.dynamic_update_slice(cache.v, v[None].astype(cache.v.dtype), start),
        cache.length,
    )


def read(cache: KVCache, layer: int, dtype) -> tuple[Array, Array]:
    """All max_len positions of `layer`: k, v [batch, max_len, n_kv_heads, head_dim] in dtype."""
    return cache.k[layer].astype(dtype), cache.v[layer].astype(dtype)


def advance(cache: KVCache, n: int) -> KVCache:
    return dataclasses.replace(cache, length=cache.length + n)


def check_capacity(cache: KVCache, new_tokens: int) -> None:
    """Clear error when writing would run past the allocated length (checked when concrete)."""
    if isinstance(cache.length, jax.core.Tracer):
        return
    if int(cache.length) + new_tokens > cache.max_len:
        raise JaxquantError(
            f"KV cache holds {cache.max_len} positions; {int(cache.length)} used + {new_tokens} "
            "new exceeds it. Allocate a longer cache (max_len)"
        )
