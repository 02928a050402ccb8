"""Perplexity over non-overlapping windows of a token stream."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from tqdm.auto import tqdm

from jaxquant.errors import JaxquantError

LogitsFn = Callable[[Any, Array], Array]


@dataclasses.dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    nll: float  # mean negative log-likelihood per scored token (nats)
    n_tokens: int  # tokens scored
    tokens_per_second: float  # forward throughput (tokens fed / wall time, after compilation)
    seconds: float


def windows(token_ids: list[int] | np.ndarray, seq_len: int, max_tokens: int | None = None
            ) -> np.ndarray:
    """Cut a token stream into non-overlapping [n, seq_len] windows (the tail is dropped)."""
    ids = np.asarray(token_ids, np.int32)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    n = len(ids) // seq_len
    if n == 0:
        raise JaxquantError(f"text too short: {len(ids)} tokens, one window needs seq_len="
                            f"{seq_len}; use a longer text or a smaller --seq-len")
    return ids[: n * seq_len].reshape(n, seq_len)


def perplexity(
    logits_fn: LogitsFn,
    params: Any,
    token_ids: list[int] | np.ndarray,
    *,
    seq_len: int = 512,
    batch_size: int = 4,
    max_tokens: int | None = None,
    progress: bool = True,
    desc: str = "perplexity",
) -> PerplexityResult:
    """logits_fn(params, tokens [B, T]) -> logits [B, T, V]. Each window scores tokens 1..T-1
    given the tokens before them in the window."""
    wins = windows(token_ids, seq_len, max_tokens)

    @jax.jit
    def nll_sum(params, batch):
        logits = logits_fn(params, batch).astype(jnp.float32)
        logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
        tgt = jnp.take_along_axis(logp, batch[:, 1:, None], axis=-1)[..., 0]
        return -jnp.sum(tgt)

    batches = [wins[i: i + batch_size] for i in range(0, len(wins), batch_size)]
    # compile on the first batch shape (and the ragged last one) before timing
    for shape in {b.shape for b in batches}:
        nll_sum(params, jnp.zeros(shape, jnp.int32)).block_until_ready()
    total = 0.0
    start = time.perf_counter()
    for b in tqdm(batches, desc=desc, disable=not progress, leave=False):
        total += float(nll_sum(params, jnp.asarray(b)))
    seconds = time.perf_counter() - start
    scored = wins.shape[0] * (seq_len - 1)
    nll = total / scored
    return PerplexityResult(math.exp(nll), nll, scored, wins.size / seconds, seconds)
