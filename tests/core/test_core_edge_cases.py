"""Bad inputs: all-zero groups, subnormal values, huge outliers, and every input dtype."""

from __future__ import annotations

import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy_reference as R  # noqa: E402

import jaxquant as jq  # noqa: E402
from jaxquant.core.spec import ArraySpec  # noqa: E402


def block_for(fmt):
    return (32, 1) if fmt.startswith("mx") else (16, 1)


def spec_for(fmt, **kw):
    return ArraySpec(fmt, block_for(fmt), 0, "group", **kw)


FORMAT_CASES = [(f, False) for f in R.ALL_FORMATS] + [("nf4", True)]


@pytest.mark.parametrize("fmt,dq", FORMAT_CASES)
def test_all_zero_groups(fmt, dq):
    """Zero blocks get a usable scale (1 for float scales, the smallest E8M0 exponent for MX, an
    E4M3 zero under a finite tensor scale for NVFP4), never NaN/Inf; they dequantize to exact
    zeros; and the other blocks still match the reference."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 6)).astype(np.float32)
    x[:, 1] = 0.0      # a whole column of zero blocks
    x[32:64, 4] = 0.0  # the last zero block(s) of a column
    q = jq.quantize_array(jnp.asarray(x), spec_for(fmt, double_quant=dq))
    d = np.asarray(q.dequantize())
    assert np.isfinite(d).all()
    assert (d[:, 1] == 0).all() and (d[32:, 4] == 0).all()
    bs = np.asarray(q.block_scale())
    zero_blocks = R.to_blocks(np.abs(x), block_for(fmt), 0.0).max(-1) == 0
    assert not np.isnan(bs).any()
    if fmt.startswith("mx"):
        # E8M0 cannot hold 0: the smallest exponent (code 0 = 2^-127), never the NaN code 255
        assert (np.asarray(q.scale)[zero_blocks] == 0).all()
        assert (np.asarray(q.scale) != 255).all()
    elif fmt == "nvfp4":
        ts = float(np.asarray(q.scale.scale).reshape(()))
        assert np.isfinite(ts) and ts > 0
        assert (np.asarray(q.scale.qvalue).astype(np.float32)[zero_blocks] == 0).all()
    elif not dq:
        np.testing.assert_array_equal(bs[zero_blocks], 1.0)
        assert (bs > 0).all()
    else:
        assert np.isfinite(bs).all()
    if fmt.startswith("uint"):
        assert (np.asarray(q.zero_point)[zero_blocks] == 0).all()
    ref = R.reference_quantize(x, fmt, block_for(fmt), double_quant=dq)
    R.check_against_reference(ref, R.as_reference_codes(fmt, q.codes()), q.block_scale(),
                              q.dequantize(jnp.float32), zero_point=q.zero_point)


@pytest.mark.parametrize("fmt", R.ALL_FORMATS)
def test_all_zero_tensor(fmt):
    q = jq.quantize_array(jnp.zeros((32, 4), jnp.bfloat16), spec_for(fmt))
    d = q.dequantize()
    assert d.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(d, np.float32), 0.0)
    assert not np.isnan(np.asarray(q.block_scale())).any()


@pytest.mark.parametrize("fmt", ["int8", "int4", "uint8", "fp8_e4m3", "fp8_e5m2", "nf4",
                                 "fp4_e2m1", "mxfp4", "mxfp8", "nvfp4"])
def test_subnormal_inputs(fmt):
    """f32 subnormals (< 2^-126): never NaN/Inf, error at most the block's largest magnitude.

    XLA on CPU flushes f32 subnormals to zero, so a block made only of subnormals gets scale 1
    (or the smallest E8M0 exponent) and dequantizes to zeros - an error below 1.2e-38 per
    element. Subnormals in a block with normal values are far below half a step and quantize to
    zero either way, so those blocks must match the reference exactly."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    tiny = (rng.uniform(-1, 1, (32,)) * 1e-39).astype(np.float32)
    assert (np.abs(tiny) < np.finfo(np.float32).tiny).all() and (tiny != 0).any()
    x[:32, 0] = tiny           # column 0, first block(s): only subnormals
    x[5, 2] = np.float32(3e-42)  # a subnormal among normal values
    q = jq.quantize_array(jnp.asarray(x), spec_for(fmt))
    d = np.asarray(q.dequantize(), np.float64)
    assert np.isfinite(d).all() and np.isfinite(np.asarray(q.block_scale())).all()
    block = block_for(fmt)
    amax = R.broadcast_blocks(R.to_blocks(np.abs(x.astype(np.float64)), block, 0.0).max(-1),
                              x.shape, block)
    assert (np.abs(d - x) <= amax).all()
    normal = R.to_blocks(np.abs(x), block, 0.0).max(-1) >= np.finfo(np.float32).tiny
    ref = R.reference_quantize(x, fmt, block)
    elems = R.broadcast_blocks(normal, x.shape, block)
    got = np.asarray(q.dequantize(jnp.float32), np.float64)
    want = ref.values
    ok = elems & ~ref.ambiguous
    np.testing.assert_allclose(got[ok], want[ok], rtol=2**-21, atol=0)
    assert d[5, 2] == 0.0


@pytest.mark.parametrize("fmt,dq", FORMAT_CASES)
def test_huge_outlier_next_to_small_values(fmt, dq):
    """A 1e30 weight in one block next to 1e-3 values: nothing overflows, the outlier is
    reconstructed to the format's relative precision, and every other block keeps its own small
    scale (it matches the reference, which computes in f64)."""
    rng = np.random.default_rng(13)
    x = (rng.standard_normal((64, 4)) * 1e-3).astype(np.float32)
    x[3, 1] = 1e30
    x[40, 2] = -1e30
    q = jq.quantize_array(jnp.asarray(x), spec_for(fmt, double_quant=dq))
    d = np.asarray(q.dequantize(), np.float64)
    assert np.isfinite(d).all() and np.isfinite(np.asarray(q.block_scale())).all()
    # relative precision at the block's amax: the asymmetric grid's step relative to the range;
    # MX: the shared exponent puts 1e30 at 6.3 (E2M1 saturates to 6) / 404 (E4M3 step 32);
    # full-range INT: +amax sits at 2^(b-1) - 0.5 steps and is clipped by half a step
    rel_outlier = {"uint2": 0.34, "uint3": 0.15, "uint4": 0.07, "mxfp4": 0.06,
                   "mxfp8": 0.04, "int2_full": 0.34, "int3_full": 0.15, "int4_full": 0.07,
                   "int8_full": 0.004}.get(fmt, 0.0)
    assert d[3, 1] == pytest.approx(1e30, rel=max(rel_outlier, 1e-5))
    assert d[40, 2] == pytest.approx(-1e30, rel=max(rel_outlier, 1e-5))
    ref = R.reference_quantize(x, fmt, block_for(fmt), double_quant=dq)
    R.check_against_reference(ref, R.as_reference_codes(fmt, q.codes()), q.block_scale(),
                              q.dequantize(jnp.float32), zero_point=q.zero_point)
    block = block_for(fmt)
    clean = R.broadcast_blocks(R.to_blocks(np.abs(x), block, 0.0).max(-1) < 1, x.shape, block)
    small_err = np.abs(d - x)[clean].max() / np.abs(x[clean]).max()
    if fmt == "nvfp4" or dq:
        # one tensor-wide scale (NVFP4's f32 tensor scale, NF4's double-quantization mean and
        # int8 step) is dominated by the outlier: the small blocks underflow to zero
        assert small_err <= 1.0
    else:
        assert small_err < 0.7  # int2/uint2 are coarse; the point is: not wiped out
        assert (d[clean] != 0).any()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("fmt", ["int8", "int4", "uint4", "fp8_e4m3", "nf4", "mxfp4", "nvfp4"])
def test_dequantize_returns_the_input_dtype(fmt, dtype):
    x = jnp.asarray(np.random.default_rng(17).standard_normal((32, 8)), dtype)
    q = jq.quantize_array(x, spec_for(fmt))
    assert q.dtype == dtype and q.meta.dtype == jnp.dtype(dtype).name
    assert q.dequantize().dtype == dtype
    assert q.dequantize(jnp.float32).dtype == jnp.float32
    assert jq.fake_quantize(x, spec_for(fmt)).dtype == dtype
    rel = float(jnp.linalg.norm((q.dequantize(jnp.float32) - x.astype(jnp.float32)).ravel())
                / jnp.linalg.norm(x.astype(jnp.float32).ravel()))
    assert rel < {"int8": 0.01, "fp8_e4m3": 0.05}.get(fmt, 0.2)
