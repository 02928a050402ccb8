"""Text generation with a KV cache: one jitted prefill, then one jitted step per new token.

`generate` works on token ids with any apply function (quantized params through an intercepted
apply); `generate_text` takes a LoadedModel and text and returns ids and text. Greedy (temperature 0) or temperature + top-p (nucleus) sampling with a PRNG key. The prompt is
right-padded to a power-of-two bucket and the cache to a multiple of 128 slots, so prompts of
different lengths reuse compiled code (pad slots are overwritten by the decode steps, and the
slot-causal mask never lets a real query see them).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax import Array

from jaxquant.errors import JaxquantError
from jaxquant.models import kv_cache
from jaxquant.models.kv_cache import KVCache

# apply_fn(params, tokens int32 [B, T], cache) -> (logits f32 [B, T, V], cache)
ApplyFn = Callable[[Any, Array, KVCache], tuple[Array, KVCache]]
_CACHE_ROUND = 128
_MIN_PREFILL = 64  # prompts are right-padded to a power of two >= this: one compiled prefill
                   # serves every short prompt


@dataclasses.dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy; top_p in (0, 1] keeps the smallest set of most likely tokens
    whose probability reaches top_p (1.0: all tokens)."""

    temperature: float = 0.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise JaxquantError(f"temperature={self.temperature} must be >= 0 (0 is greedy)")
        if not 0 < self.top_p <= 1:
            raise JaxquantError(f"top_p={self.top_p} must be in (0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    """tokens: the new ids (eos included when reached); text: their decoded text."""

    tokens: list[int]
    text: str
    prompt_tokens: int
    stopped_at_eos: bool


def sample(logits: Array, key: Array, temperature: Array, top_p: Array) -> Array:
    """Temperature + top-p sampling: logits f32 [B, V] -> ids int32 [B] (temperature > 0)."""
    logits = logits.astype(jnp.float32) / temperature
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    n_keep = jnp.sum(mass_before < top_p, axis=-1, keepdims=True)  # >= 1
    cutoff = jnp.take_along_axis(sorted_logits, n_keep - 1, axis=-1)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _pick(logits: Array, key: Array, temperature: Array, top_p: Array, greedy: bool) -> Array:
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return sample(logits, key, temperature, top_p)


@functools.lru_cache(maxsize=32)
def _compiled(apply_fn: ApplyFn, greedy: bool) -> tuple[Callable, Callable]:
    """(prefill, step), jitted once per apply_fn and sampling kind."""

    @jax.jit
    def prefill(params, tokens, n, cache, key, temperature, top_p):
        logits, cache = apply_fn(params, tokens, cache)
        cache = dataclasses.replace(cache, length=n)  # forget the right padding
        last = jax.lax.dynamic_index_in_dim(logits, n - 1, axis=1, keepdims=False)
        return _pick(last, key, temperature, top_p, greedy), cache

    @jax.jit
    def step(params, token, cache, key, temperature, top_p):
        logits, cache = apply_fn(params, token[:, None], cache)
        return _pick(logits[:, -1], key, temperature, top_p, greedy), cache

    return prefill, step


@functools.lru_cache(maxsize=8)
def module_apply(module: Any) -> ApplyFn:
    """apply_fn of a Linen `Llama` (one function per module, so compiled code is reused)."""

    def apply_fn(params: Any, tokens: Array, cache: KVCache) -> tuple[Array, KVCache]:
        return module.apply(params, tokens, cache=cache)

    return apply_fn


def generate(
    apply_fn: ApplyFn,
    params: Any,
    init_cache: Callable[[int, int], KVCache],
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int = 64,
    sampling: Sampling = Sampling(),
    eos_id: int | Sequence[int] | None = None,
    seed: int = 0,
    key: Array | None = None,
    max_len: int | None = None,
) -> list[int]:
    """Decode up to max_new_tokens after prompt_ids (batch 1); the new ids, eos included.

    apply_fn(params, tokens [B, T], cache) -> (logits, cache), e.g. a model's apply wrapped in
    jaxquant.intercept() for quantized params; init_cache(batch, max_len) -> empty KVCache
    (e.g. Llama.init_cache). Sampling uses `key`, else jax.random.key(seed). max_len, if given,
    caps prompt + new tokens (the model's context length)."""
    ids, _ = _decode(apply_fn, params, init_cache, prompt_ids, max_new_tokens, sampling,
                     eos_id, key if key is not None else jax.random.key(seed), max_len)
    return ids


def _decode(apply_fn: ApplyFn, params: Any, init_cache: Callable[[int, int], KVCache],
            prompt_ids: Sequence[int], max_new_tokens: int, sampling: Sampling,
            eos_id: int | Sequence[int] | None, key: Array,
            max_len: int | None) -> tuple[list[int], bool]:
    n = len(prompt_ids)
    if n == 0:
        raise JaxquantError("the prompt is empty; give at least one token")
    if max_new_tokens < 1:
        raise JaxquantError(f"max_new_tokens={max_new_tokens} must be >= 1")
    if max_len is not None and n + max_new_tokens > max_len:
        raise JaxquantError(f"prompt ({n} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                            f"the model's context length {max_len}")
    stops = set() if eos_id is None else {int(eos_id)} if isinstance(eos_id, int) else \
        {int(i) for i in eos_id}
    padded = max(_MIN_PREFILL, 1 << (n - 1).bit_length())
    slots = -(-(max(padded, n + max_new_tokens)) // _CACHE_ROUND) * _CACHE_ROUND
    prefill, step = _compiled(apply_fn, sampling.greedy)
    temperature, top_p = jnp.float32(max(sampling.temperature, 1e-6)), jnp.float32(sampling.top_p)
    tokens = jnp.zeros((1, padded), jnp.int32).at[0, :n].set(jnp.asarray(prompt_ids, jnp.int32))
    key, sub = jax.random.split(key)
    token, cache = prefill(params, tokens, jnp.int32(n), init_cache(1, slots), sub,
                           temperature, top_p)
    out: list[int] = []
    while True:
        t = int(token[0])
        out.append(t)
        if t in stops:
            return out, True
        if len(out) == max_new_tokens:
            return out, False
        key, sub = jax.random.split(key)
        token, cache = step(params, token, cache, sub, temperature, top_p)


def generate_text(
    model: Any,
    prompt: str | Sequence[int],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    key: Array | None = None,
    params: Any = None,
    apply_fn: ApplyFn | None = None,
    seed: int = 0,
    eos_id: int | Sequence[int] | None = None,
) -> GenerationResult:
    """Continue `prompt` (text, or token ids) with a LoadedModel; stops at the tokenizer's eos
    (or `eos_id`). Sampling uses `key`, else jax.random.key(seed). params / apply_fn override
    the model's (e.g. quantized params and an apply wrapped in jaxquant.intercept())."""
    tok = model.tokenizer
    prompt_ids = tok.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
    cfg = model.config
    ids, stopped = _decode(
        apply_fn or module_apply(model.module),
        model.params if params is None else params,
        functools.partial(kv_cache.init_cache, cfg),
        prompt_ids,
        max_new_tokens,
        Sampling(temperature, top_p),
        tok.eos_id if eos_id is None else eos_id,
        key if key is not None else jax.random.key(seed),
        cfg.max_seq_len,
    )
    return GenerationResult(ids, tok.decode(ids, skip_special=True), len(prompt_ids), stopped)
