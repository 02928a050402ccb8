"""Observers: statistics of activations accumulated over calibration batches, turned into static
scales. Each observer state is an immutable pytree; `update` returns a new one (jit-friendly).

    state = HistogramObserver.init()
    for x in batches:
        state = HistogramObserver.update(state, x)
    amax = HistogramObserver.amax(state, Clipping("percentile", percentile=99.99), "int8")
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import Array

from jaxquant.core.spec import Clipping
from jaxquant.formats.registry import get_format


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MinMaxState:
    """Running min and max over all batches (f32 scalars), and how many batches were seen."""

    lo: Array
    hi: Array
    batches: Array


class MinMaxObserver:
    @staticmethod
    def init() -> MinMaxState:
        return MinMaxState(jnp.float32(jnp.inf), jnp.float32(-jnp.inf), jnp.int32(0))

    @staticmethod
    def update(state: MinMaxState, x: Array) -> MinMaxState:
        x = jnp.asarray(x, jnp.float32)
        return MinMaxState(
            jnp.minimum(state.lo, jnp.min(x)), jnp.maximum(state.hi, jnp.max(x)), state.batches + 1
        )

    @staticmethod
    def amax(state: MinMaxState) -> Array:
        return jnp.maximum(jnp.abs(state.lo), jnp.abs(state.hi))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class HistogramState:
    """Histogram of |x| over [0, edge] in `counts.shape[0]` equal bins (f32 counts)."""

    counts: Array
    edge: Array


class HistogramObserver:
    """|x| histogram with a range that grows: when a batch exceeds the current edge, the old
    counts are re-binned into the wider range (each old bin's count moves to the new bin holding
    its center), as TensorRT/PyTorch histogram calibrators do."""

    @staticmethod
    def init(bins: int = 2048) -> HistogramState:
        return HistogramState(jnp.zeros((bins,), jnp.float32), jnp.float32(0.0))

    @staticmethod
    def update(state: HistogramState, x: Array) -> HistogramState:
        a = jnp.abs(jnp.asarray(x, jnp.float32)).reshape(-1)
        bins = state.counts.shape[0]
        edge = jnp.maximum(state.edge, jnp.max(a))
        edge = jnp.where(edge > 0, edge, 1.0)
        old_centers = (jnp.arange(bins, dtype=jnp.float32) + 0.5) * state.edge / bins
        old_idx = jnp.clip(jnp.floor(old_centers / edge * bins), 0, bins - 1).astype(jnp.int32)
        counts = jnp.zeros((bins,), jnp.float32).at[old_idx].add(state.counts)
        idx = jnp.clip(jnp.floor(a / edge * bins), 0, bins - 1).astype(jnp.int32)
        return HistogramState(counts.at[idx].add(1.0), edge)

    @staticmethod
    def amax(state: HistogramState, clipping: Clipping, format: str) -> Array:
        """Clip value for the observed |x|: max (minmax), a percentile, or the MSE-optimal clip
        for `format` (bin centers weighted by their counts, candidate clips on the grid of
        Clipping.grid ratios between 1 - max_shrink and 1, plus percentile 99.9-99.999 values)."""
        bins = state.counts.shape[0]
        centers = (jnp.arange(bins, dtype=jnp.float32) + 0.5) * state.edge / bins
        cdf = jnp.cumsum(state.counts) / jnp.maximum(jnp.sum(state.counts), 1.0)
        if clipping.method == "minmax":
            return state.edge
        if clipping.method == "percentile":
            i = jnp.searchsorted(cdf, clipping.percentile / 100.0)
            return (jnp.minimum(i, bins - 1).astype(jnp.float32) + 1.0) * state.edge / bins
        codec = get_format(format).codec
        ratios = 1.0 - clipping.max_shrink * jnp.arange(clipping.grid + 1) / clipping.grid
        pct = jnp.array([0.999, 0.9999, 0.99999])
        pct_clip = (jnp.minimum(jnp.searchsorted(cdf, pct), bins - 1) + 1.0) * state.edge / bins
        candidates = jnp.concatenate([ratios * state.edge, pct_clip])

        def err(clip: Array) -> Array:
            s = clip / codec.qmax
            q = codec.decode(codec.encode(centers / s)) * s
            return jnp.sum(state.counts * jnp.abs(centers - q) ** clipping.norm)

        errors = jax.vmap(err)(candidates)
        return candidates[jnp.argmin(errors)]


def static_scale(amax: Array, format: str) -> Array:
    """Activation scale for a static scheme: amax / qmax of the format (1 where amax is 0)."""
    s = jnp.asarray(amax, jnp.float32) / get_format(format).codec.qmax
    return jnp.where(s > 0, s, 1.0)
