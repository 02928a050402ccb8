"""Text generation with a KV cache: one prefill, then one jitted step per token."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import Array

from jaxquant.errors import JaxquantError
from jaxquant.models.kv_cache import KVCache, check_capacity

ApplyFn = Callable[..., tuple[Array, KVCache]]


@dataclasses.dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy; top_p in (0, 1] keeps the smallest set of tokens whose
    probability reaches top_p."""

    temperature: float = 0.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise JaxquantError(f"temperature={self.temperature} must be >= 0")
        if not 0 < self.top_p <= 1:
            raise JaxquantError(f"top_p={self.top_p} must be in (0, 1]")


def sample(logits: Array, key: Array, sampling: Sampling) -> Array:
    """logits f32 [B, V] -> token ids int32 [B]."""
    if sampling.temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / sampling.temperature
    if sampling.top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        cutoff_idx = jnp.sum(cum < sampling.top_p, axis=-1, keepdims=True)
        cutoff = jnp.take_along_axis(sorted_logits, cutoff_idx, axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def generate(
    apply_fn: ApplyFn,
    params: Any,
    init_cache: Callable[[int, int], KVCache],
    prompt_ids: list[int],
    *,
    max_new_tokens: int = 32,
    sampling: Sampling = Sampling(),
    eos_id: int | None = None,
    seed: int = 0,
) -> list[int]:
    """Generate up to max_new_tokens after prompt_ids (batch 1); stops at eos_id.

    apply_fn(params, tokens [B, T], cache) -> (logits [B, T, V], cache), e.g. the model's
    apply wrapped in jaxquant.intercept() for quantized params. Returns the new token ids.
    """
    if not prompt_ids:
        raise JaxquantError("prompt is empty; give at least one token")
    cache = init_cache(1, len(prompt_ids) + max_new_tokens)
    check_capacity(cache, len(prompt_ids) + max_new_tokens)
    prefill = jax.jit(apply_fn)

    @jax.jit
    def step(params, token, cache, key):
        logits, cache = apply_fn(params, token[:, None], cache)
        return sample(logits[:, -1], key, sampling), cache

    logits, cache = prefill(params, jnp.asarray([prompt_ids], jnp.int32), cache)
    key = jax.random.key(seed)
    key, sub = jax.random.split(key)
    token = sample(logits[:, -1], sub, sampling)
    out: list[int] = []
    for _ in range(max_new_tokens):
        t = int(token[0])
        out.append(t)
        if eos_id is not None and t == eos_id:
            break
        key, sub = jax.random.split(key)
        token, cache = step(params, token, cache, sub)
    return out
