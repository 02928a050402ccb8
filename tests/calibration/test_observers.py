"""Observers accumulate activation statistics over batches into static scales."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxquant.calibration.observers import (HistogramObserver, MinMaxObserver, static_scale)
from jaxquant.core.spec import Clipping


def batches(n: int = 6, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # growing magnitudes force the histogram range to widen and re-bin
    return [rng.standard_t(df=4, size=(64, 32)).astype(np.float32) * (1 + i) for i in range(n)]


def test_minmax_matches_numpy_over_all_batches():
    state = MinMaxObserver.init()
    for b in batches():
        state = MinMaxObserver.update(state, b)
    everything = np.concatenate(batches())
    assert float(state.lo) == everything.min() and float(state.hi) == everything.max()
    assert float(MinMaxObserver.amax(state)) == np.abs(everything).max()
    assert int(state.batches) == 6


def test_histogram_percentile_close_to_exact_percentile():
    state = HistogramObserver.init(bins=4096)
    update = jax.jit(HistogramObserver.update)
    for b in batches():
        state = update(state, b)
    a = np.abs(np.concatenate(batches())).ravel()
    assert float(jnp.sum(state.counts)) == a.size  # no sample lost in re-binning
    for p in (99.0, 99.9):
        est = float(HistogramObserver.amax(state, Clipping("percentile", percentile=p), "int8"))
        exact = np.percentile(a, p)
        # re-binning moves counts by at most one (final-width) bin per range growth
        assert abs(est - exact) <= 8 * float(state.edge) / 4096 + 0.02 * exact
    assert float(HistogramObserver.amax(state, Clipping("minmax"), "int8")) == pytest.approx(
        a.max())


def test_mse_clip_is_below_max_for_heavy_tails_and_lowers_error():
    rng = np.random.default_rng(1)
    x = rng.standard_t(df=2, size=(20000,)).astype(np.float32)
    state = HistogramObserver.update(HistogramObserver.init(), x)
    clip = float(HistogramObserver.amax(state, Clipping("mse"), "int4"))
    assert clip < np.abs(x).max()

    def err(c: float) -> float:
        s = c / 7
        q = np.clip(np.round(x / s), -7, 7) * s
        return float(np.mean((x - q) ** 2))

    assert err(clip) < err(float(np.abs(x).max()))


def test_static_scale_of_zero_range_is_one():
    assert float(static_scale(jnp.float32(0.0), "int8")) == 1.0
    assert float(static_scale(jnp.float32(127.0), "int8")) == pytest.approx(1.0)
