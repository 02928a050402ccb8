"""A small optax training loop for next-token prediction, shared by QAT, QLoRA and the float
fine-tune reference.

    step = make_step(lambda trainable, tokens: lm_loss(logits(trainable, tokens), tokens), opt)
    trainable, opt_state, losses = train(step, trainable, opt.init(trainable), batches, steps)
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array
from tqdm.auto import tqdm

from jaxquant.errors import JaxquantError

LossFn = Callable[[Any, Array], Array]  # (trainable, tokens int32 [B, T]) -> scalar loss


def lm_loss(logits: Array, tokens: Array) -> Array:
    """Mean next-token cross entropy (nats): logits [B, T, V], tokens int32 [B, T] -> f32 []."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))


def token_batches(token_ids: Any, seq_len: int, batch_size: int, seed: int = 0
                  ) -> Iterator[np.ndarray]:
    """Endless batches int32 [batch_size, seq_len] of random windows of a token stream."""
    ids = np.asarray(token_ids, np.int32).reshape(-1)
    if len(ids) < seq_len + 1:
        raise JaxquantError(f"training text has {len(ids)} tokens, fewer than seq_len={seq_len}; "
                            "use a longer --text or a smaller --seq-len")
    rng = np.random.default_rng(seed)
    while True:
        starts = rng.integers(0, len(ids) - seq_len + 1, batch_size)
        yield np.stack([ids[s: s + seq_len] for s in starts])


def check_schedule(learning_rate: float | optax.Schedule, steps: int) -> None:
    """JaxquantError unless the learning rate is positive and finite at every step (a zero or
    negative rate stalls or ascends the loss; scales stay positive anyway: they are trained as
    log-scales)."""
    if steps < 1:
        raise JaxquantError(f"steps={steps} must be >= 1")
    lrs = ([float(learning_rate(i)) for i in range(steps)] if callable(learning_rate)
           else [float(learning_rate)])
    bad = [(i, lr) for i, lr in enumerate(lrs) if not (lr > 0 and math.isfinite(lr))]
    if bad:
        i, lr = bad[0]
        raise JaxquantError(f"learning_rate is {lr} at step {i}; it must be positive and finite "
                            "at every step (check the schedule's end value and sign)")


def make_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *frozen_args: Any):
    """jitted (trainable, opt_state, tokens) -> (trainable, opt_state, loss); `frozen_args` are
    passed to loss_fn after the tokens and never differentiated (e.g. a quantized base)."""

    @jax.jit
    def step(trainable: Any, opt_state: Any, tokens: Array, *frozen: Any):
        loss, grads = jax.value_and_grad(loss_fn)(trainable, tokens, *frozen)
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss

    return lambda trainable, opt_state, tokens: step(trainable, opt_state, jnp.asarray(tokens),
                                                     *frozen_args)


def train(step: Callable, trainable: Any, opt_state: Any, batches: Iterator[np.ndarray],
          steps: int, *, progress: bool = True, desc: str = "train"
          ) -> tuple[Any, Any, list[float]]:
    """Run `steps` steps; returns (trainable, opt_state, per-step losses). The progress bar
    shows the current loss. A non-finite loss stops with an error naming the step."""
    losses: list[float] = []
    bar = tqdm(range(steps), desc=desc, disable=not progress, unit="step")
    for i in bar:
        trainable, opt_state, loss = step(trainable, opt_state, next(batches))
        loss = float(loss)
        if not math.isfinite(loss):
            raise JaxquantError(f"loss became {loss} at step {i}; lower the learning rate")
        losses.append(loss)
        bar.set_postfix(loss=f"{loss:.4f}")
    return trainable, opt_state, losses


def tree_bytes(tree: Any) -> int:
    """Bytes of every array leaf of a pytree (QArrays count their packed storage)."""
    return sum(int(x.size) * jnp.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree)
               if hasattr(x, "dtype"))
