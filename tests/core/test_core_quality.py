"""Error bounds and quality orderings: symmetric INT error <= scale / 2, per-channel vs
per-tensor, NF4 vs INT4, MSE clipping vs min-max, percentile clipping."""

from __future__ import annotations

import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy_reference as R  # noqa: E402

import jaxquant as jq  # noqa: E402
from jaxquant.core.spec import ArraySpec, Clipping  # noqa: E402


def mse(a, b) -> float:
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def deq(x, fmt, block, **kw) -> np.ndarray:
    return np.asarray(jq.quantize_array(jnp.asarray(x), ArraySpec(fmt, block, 0, **kw)).dequantize())


@pytest.mark.parametrize("fmt", ["int8", "int4", "int3", "int2"])
@pytest.mark.parametrize("block", [(96, 40), (96, 1), (32, 1), (7, 5)])
def test_symmetric_int_error_at_most_half_a_step(fmt, block):
    """|x - dequant| <= scale / 2 per element, up to jaxquant's f32 rounding of x / scale
    (half an f32 ulp of |y| <= qmax: 2^b * 2^-24 steps) and of the dequantized product."""
    rng = np.random.default_rng(hash((fmt, block)) % 2**32)
    x = (rng.standard_normal((96, 40)) * rng.uniform(0.01, 100, (1, 40))).astype(np.float32)
    q = jq.quantize_array(jnp.asarray(x), ArraySpec(fmt, block, 0))
    scale = R.broadcast_blocks(np.asarray(q.block_scale(), np.float64), x.shape, block)
    err = np.abs(np.asarray(q.dequantize(), np.float64) - x)
    slack = 2.0 ** jq.get_format(fmt).bits * 2**-24
    assert (err <= scale * (0.5 + slack) + R.ulp32(x)).all(), float((err / scale).max())
    # and the bound is attained up to sampling: the worst element is close to half a step
    assert (err / scale).max() > 0.45


def test_per_channel_beats_per_tensor_on_heterogeneous_columns():
    rng = np.random.default_rng(0)
    col_scale = np.exp(rng.uniform(-4, 4, (1, 64)))  # column magnitudes spread over e^8
    w = (rng.standard_normal((256, 64)) * col_scale).astype(np.float32)
    for fmt in ("int8", "int4", "uint4", "fp8_e4m3", "fp4_e2m1"):
        per_tensor = mse(deq(w, fmt, (256, 64)), w)
        per_channel = mse(deq(w, fmt, (256, 1)), w)
        # integer grids are uniform, so the large columns' step is forced on the small ones;
        # FP grids are relative, so only the small columns' underflow is saved
        factor = 0.5 if "int" in fmt else 1.0
        assert per_channel < factor * per_tensor, (fmt, per_channel, per_tensor)
        # and relative to each column's own size the gap is dramatic for the small columns
        small = np.argsort(col_scale[0])[:8]
        rel_t = np.abs(deq(w, fmt, (256, 64)) - w)[:, small].mean() / np.abs(w[:, small]).mean()
        rel_c = np.abs(deq(w, fmt, (256, 1)) - w)[:, small].mean() / np.abs(w[:, small]).mean()
        assert rel_c < rel_t


def test_per_channel_ties_per_tensor_on_matched_columns():
    """Columns that are permutations of one vector share one amax: every channel scale equals
    the tensor scale and the two quantizations are identical."""
    rng = np.random.default_rng(1)
    v = rng.standard_normal(256)
    w = np.stack([rng.permutation(v) for _ in range(32)], axis=1).astype(np.float32)
    for fmt in ("int8", "int4", "uint8", "fp8_e4m3", "nf4", "fp4_e2m1"):
        t = jq.quantize_array(jnp.asarray(w), ArraySpec(fmt, (256, 32), 0))
        c = jq.quantize_array(jnp.asarray(w), ArraySpec(fmt, (256, 1), 0))
        np.testing.assert_array_equal(np.asarray(c.block_scale())[0],
                                      np.full(32, np.asarray(t.block_scale())[0, 0]))
        np.testing.assert_array_equal(np.asarray(c.dequantize()), np.asarray(t.dequantize()))


def test_nf4_beats_int4_on_gaussian_and_loses_on_uniform():
    rng = np.random.default_rng(2)
    gauss = rng.standard_normal((4096, 16)).astype(np.float32)
    unif = rng.uniform(-1, 1, (4096, 16)).astype(np.float32)
    for block in [(64, 1), (128, 1)]:
        nf4_g, int4_g = mse(deq(gauss, "nf4", block), gauss), mse(deq(gauss, "int4", block), gauss)
        nf4_u, int4_u = mse(deq(unif, "nf4", block), unif), mse(deq(unif, "int4", block), unif)
        assert nf4_g < 0.9 * int4_g, (block, nf4_g, int4_g)
        assert int4_u < 0.9 * nf4_u, (block, int4_u, nf4_u)


CLIP_FORMATS = ["int4", "int3", "uint4", "nf4", "fp4_e2m1", "fp8_e4m3", "mxfp4", "nvfp4"]


def _block_errors(x, d, block):
    return (R.to_blocks(np.asarray(d, np.float64) - x, block, 0.0) ** 2).sum(-1)


@pytest.mark.parametrize("fmt", CLIP_FORMATS)
def test_mse_clipping_never_worse_than_minmax(fmt):
    """Per block, the MSE search includes ratio 1 (min-max) and keeps it unless something is
    strictly better, so its error is never larger; the tolerance 1e-5 relative covers the f32
    error sums jaxquant compares against the f64 sums here. It also finds (within that
    tolerance) the best of the documented candidate ratios, as computed by the reference."""
    rng = np.random.default_rng(len(fmt))
    x = rng.standard_t(3, (128, 24)).astype(np.float32)  # heavy tails: clipping pays off
    block = (32, 1) if fmt == "mxfp4" else (16, 1)
    clip = Clipping(method="mse", grid=20, max_shrink=0.3)
    d_mm = deq(x, fmt, block)
    d_mse = deq(x, fmt, block, clipping=clip)
    e_mm, e_mse = _block_errors(x, d_mm, block), _block_errors(x, d_mse, block)
    assert (e_mse <= e_mm * (1 + 1e-5) + 1e-30).all()
    best = R.mse_block_errors(x, fmt, block, grid=20, max_shrink=0.3).min(0)
    assert (e_mse <= best * (1 + 1e-4) + 1e-12).all()
    if fmt != "mxfp4":  # power-of-two scales: a shrink of <= 30% rarely moves the exponent
        assert e_mse.sum() < e_mm.sum()  # heavy tails: strictly better overall


@pytest.mark.xfail(strict=True, reason=(
    "NF4 double quantization couples the blocks: the int8 codes of every block scale depend on "
    "the mean and the per-256 amax of all scales, so a block's stored scale differs from the one "
    "its MSE search scored; on t(3) weights ~30% of blocks end up worse than min-max (total "
    "error still ~7% lower). Reported, not fixed: it needs a design decision."))
def test_mse_clipping_with_double_quant_never_worse_than_minmax_per_block():
    x = np.random.default_rng(0).standard_t(3, (256, 64)).astype(np.float32)
    d_mm = deq(x, "nf4", (16, 1), double_quant=True)
    d_mse = deq(x, "nf4", (16, 1), double_quant=True, clipping=Clipping(method="mse"))
    e_mm, e_mse = _block_errors(x, d_mm, (16, 1)), _block_errors(x, d_mse, (16, 1))
    assert e_mse.sum() < e_mm.sum()  # this part holds
    assert (e_mse <= e_mm * (1 + 1e-5)).all()


@pytest.mark.parametrize("fmt", ["int4", "uint4", "nf4", "fp8_e4m3"])
def test_mse_clipping_with_l1_norm_never_worse_in_l1(fmt):
    rng = np.random.default_rng(5)
    x = rng.standard_t(3, (64, 8)).astype(np.float32)
    d_mm = deq(x, fmt, (16, 1))
    d_l1 = deq(x, fmt, (16, 1), clipping=Clipping(method="mse", norm=1.0))
    e_mm = np.abs(R.to_blocks(d_mm - x, (16, 1), 0.0)).sum(-1)
    e_l1 = np.abs(R.to_blocks(d_l1 - x, (16, 1), 0.0)).sum(-1)
    assert (e_l1 <= e_mm * (1 + 1e-5) + 1e-30).all()


def test_percentile_100_is_minmax_and_lower_percentiles_clip_outliers():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((200, 6)).astype(np.float32)
    x[17, 2] = 40.0  # one outlier in column 2
    block = (200, 1)
    mm = jq.quantize_array(jnp.asarray(x), ArraySpec("int8", block, 0))
    p100 = jq.quantize_array(jnp.asarray(x), ArraySpec(
        "int8", block, 0, clipping=Clipping(method="percentile", percentile=100.0)))
    np.testing.assert_array_equal(np.asarray(p100.dequantize()), np.asarray(mm.dequantize()))
    p99 = jq.quantize_array(jnp.asarray(x), ArraySpec(
        "int8", block, 0, clipping=Clipping(method="percentile", percentile=99.0)))
    s_mm, s_99 = np.asarray(mm.block_scale())[0], np.asarray(p99.block_scale())[0]
    # the scale follows the 99th percentile of |x| per column, as numpy computes it
    want = np.percentile(np.abs(x.astype(np.float64)), 99.0, axis=0) / 127
    np.testing.assert_allclose(s_99, want, rtol=2**-18)
    assert s_99[2] < s_mm[2] / 5  # the outlier no longer sets column 2's scale
    d = np.asarray(p99.dequantize())
    assert d[17, 2] == pytest.approx(127 * s_99[2], rel=2**-22)  # the outlier saturates at qmax
    # inside the clipped range, column 2 is now quantized to half a (much finer) step
    inside = np.abs(x[:, 2]) <= 127 * s_99[2]
    assert inside.sum() >= 197  # the 99th percentile of 200 values clips at most 2 (+ ties)
    assert np.abs(d[inside, 2] - x[inside, 2]).max() <= s_99[2] / 2 * (1 + 2**-20)
    assert (np.abs(d[~inside, 2]) == np.float32(127 * s_99[2])).all()
    # asymmetric: the low and high percentiles are used separately
    pa = jq.quantize_array(jnp.asarray(x), ArraySpec(
        "uint8", block, 0, clipping=Clipping(method="percentile", percentile=99.0)))
    x64 = x.astype(np.float64)
    lo = np.minimum(np.percentile(x64, 1.0, axis=0), 0)
    hi = np.maximum(np.percentile(x64, 99.0, axis=0), 0)
    np.testing.assert_allclose(np.asarray(pa.block_scale())[0], (hi - lo) / 255, rtol=2**-17)
