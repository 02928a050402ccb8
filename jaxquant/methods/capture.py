"""Capturing the inputs of every nn.Dense while a Linen module runs, and streaming statistics.

`captured_apply` wraps module.apply so that it also returns {relative module path: input
[tokens, K]} for each Dense layer it calls; under jax.jit the captured inputs are outputs of the
jitted function. `LayerStats` accumulates what the PTQ methods need without keeping activations:
the Hessian X^T X in f32 (GPTQ), per-channel max and mean |x| (SmoothQuant, AWQ) and a bounded
sample of rows (AWQ's scale search).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import Array

import jaxquant as jq


def captured_apply(module: nn.Module, quantized: bool = True) -> Callable[..., tuple[Any, dict]]:
    """fn(variables, *args) -> (module.apply(variables, *args), {dense path: x [T, K]}).

    Layers that read the same array (q/k/v after one norm) get the same captured object, so a
    traced caller can tell them apart from equal-valued inputs with `is` (input_groups).
    quantized=True runs QArray weights through jaxquant.intercept()."""

    def fn(variables: Any, *args: Any) -> tuple[Any, dict]:
        seen: dict[str, Array] = {}
        flat: list[tuple[Any, Array]] = []  # (input as the layer got it, its [T, K] view)

        def record(next_fun, call_args, call_kwargs, context):
            if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
                x = call_args[0]
                view = next((v for raw, v in flat if raw is x), None)
                if view is None:
                    view = x.reshape(-1, x.shape[-1])
                    flat.append((x, view))
                seen["/".join(context.module.path)] = view
            return next_fun(*call_args, **call_kwargs)

        if quantized:
            with jq.intercept(), nn.intercept_methods(record):
                out = module.apply(variables, *args)
        else:
            with nn.intercept_methods(record):
                out = module.apply(variables, *args)
        return out, seen

    return fn


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LayerStats:
    """Input statistics of one layer. hessian [K, K] f32 or None; absmax, abssum [K] f32;
    count: tokens seen; sample [S, K]: the first S rows seen (S fixed at creation)."""

    hessian: Array | None
    absmax: Array
    abssum: Array
    count: Array
    sample: Array
    filled: Array

    @staticmethod
    def init(k: int, *, hessian: bool, sample_rows: int) -> "LayerStats":
        return LayerStats(
            jnp.zeros((k, k), jnp.float32) if hessian else None,
            jnp.zeros((k,), jnp.float32), jnp.zeros((k,), jnp.float32), jnp.int32(0),
            jnp.zeros((sample_rows, k), jnp.float32), jnp.int32(0),
        )

    @property
    def absmean(self) -> Array:
        return self.abssum / jnp.maximum(self.count, 1)

    def samples(self) -> Array:
        return self.sample[: int(self.filled)]


def input_groups(seen: dict[str, Any]) -> tuple[tuple[str, ...], ...]:
    """Paths of captured_apply's output grouped by shared input object, in capture order."""
    groups: list[list[str]] = []
    for rel, x in seen.items():
        for g in groups:
            if seen[g[0]] is x:
                g.append(rel)
                break
        else:
            groups.append([rel])
    return tuple(tuple(g) for g in groups)


def add_batch(stats: LayerStats, x: Array) -> LayerStats:
    """Add a batch of inputs x [T, K] to the statistics."""
    x = x.astype(jnp.float32)
    a = jnp.abs(x)
    h = None if stats.hessian is None else stats.hessian + x.T @ x
    rows = stats.sample.shape[0]
    take = jnp.minimum(rows - stats.filled, x.shape[0])
    idx = jnp.arange(rows)
    src = jnp.clip(idx - stats.filled, 0, x.shape[0] - 1)
    fresh = (idx >= stats.filled) & (idx < stats.filled + take)
    sample = jnp.where(fresh[:, None], x[src], stats.sample)
    return LayerStats(h, jnp.maximum(stats.absmax, a.max(0)), stats.abssum + a.sum(0),
                      stats.count + x.shape[0], sample, stats.filled + take)


@jax.jit
def update_stats(stats: LayerStats, x: Array) -> LayerStats:
    """Add a batch of inputs x [T, K] to the statistics (jitted; the same math runs inside
    larger jitted functions through add_batch)."""
    return add_batch(stats, x)
