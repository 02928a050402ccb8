"""Perplexity over non-overlapping windows of a token stream.

Window w holds tokens [w * seq_len, (w + 1) * seq_len); it scores its tokens 1..seq_len-1, each
given the tokens before it inside the window. The tail shorter than one window is dropped.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from tqdm.auto import tqdm

from jaxquant.errors import JaxquantError

# apply_fn(params, tokens int32 [B, T]) -> logits [B, T, V]
ApplyFn = Callable[[Any, Array], Array]


@dataclasses.dataclass(frozen=True)
class PerplexityResult:
    """ppl = exp(nll); nll: mean negative log-likelihood per scored token (nats);
    n_tokens: tokens scored (windows * (seq_len - 1)); tokens_per_second: window tokens fed
    through the model per second; seconds: evaluation wall time (compilation excluded)."""

    ppl: float
    nll: float
    n_tokens: int
    tokens_per_second: float
    seconds: float


def windows(token_ids: Sequence[int] | np.ndarray, seq_len: int,
            max_tokens: int | None = None) -> np.ndarray:
    """Non-overlapping windows int32 [n, seq_len] of the first max_tokens ids (tail dropped)."""
    if seq_len < 2:
        raise JaxquantError(f"seq_len={seq_len} must be >= 2 (a window scores seq_len - 1 tokens)")
    ids = np.asarray(token_ids, np.int32).reshape(-1)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    n = len(ids) // seq_len
    if n == 0:
        raise JaxquantError(f"text too short for one window: seq_len={seq_len} needs at least "
                            f"{seq_len} tokens, the text has {len(ids)}; use a longer text or "
                            "a smaller seq_len")
    return ids[: n * seq_len].reshape(n, seq_len)


def _nll_fn(apply_fn: ApplyFn) -> Callable[[Any, Array, Array], Array]:
    """jit(params, tokens [B, T], weight [B]) -> sum over windows of weight * window NLL."""

    def nll_sum(params: Any, tokens: Array, weight: Array) -> Array:
        logits = apply_fn(params, tokens).astype(jnp.float32)
        logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
        target = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
        return -jnp.sum(jnp.sum(target, axis=-1) * weight)

    return jax.jit(nll_sum)


def perplexity(
    apply_fn: ApplyFn,
    params: Any,
    token_ids: Sequence[int] | np.ndarray,
    *,
    seq_len: int = 512,
    batch_size: int = 4,
    max_tokens: int | None = None,
    progress: bool = True,
    desc: str = "perplexity",
) -> PerplexityResult:
    """Perplexity of `token_ids` under apply_fn(params, tokens [B, T]) -> logits [B, T, V].

    Batches of batch_size windows (the last one padded with weight-0 windows, so one shape
    compiles); max_tokens caps the ids used. Compilation happens before the timed loop."""
    if batch_size < 1:
        raise JaxquantError(f"batch_size={batch_size} must be >= 1")
    wins = windows(token_ids, seq_len, max_tokens)
    n = len(wins)
    batch_size = min(batch_size, n)
    n_batches = -(-n // batch_size)
    padded = np.zeros((n_batches * batch_size, seq_len), np.int32)
    padded[:n] = wins
    weight = (np.arange(len(padded)) < n).astype(np.float32)
    fn = _nll_fn(apply_fn)
    compiled = fn.lower(params, jnp.asarray(padded[:batch_size]),
                        jnp.asarray(weight[:batch_size])).compile()
    total = 0.0
    start = time.perf_counter()
    for b in tqdm(range(n_batches), desc=desc, disable=not progress, unit="batch"):
        sl = slice(b * batch_size, (b + 1) * batch_size)
        total += float(compiled(params, jnp.asarray(padded[sl]), jnp.asarray(weight[sl])))
    seconds = time.perf_counter() - start
    scored = n * (seq_len - 1)
    nll = total / scored
    ppl = math.exp(nll) if nll < 700 else math.inf  # NaN stays NaN (broken logits)
    return PerplexityResult(ppl, nll, scored, n * seq_len / max(seconds, 1e-9),
                            seconds)
