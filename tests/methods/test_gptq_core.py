"""GPTQ against round-to-nearest on the same grid, with float64 numpy checks of the result."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxquant as jq
from jaxquant.core.quantize import quantize_array
from jaxquant.errors import JaxquantError, RecipeError
from jaxquant.methods.gptq_core import gptq_quantize, inverse_hessian_factor
from jaxquant.recipes.schemes import WeightScheme

K, N, T = 256, 96, 1024


def correlated_inputs(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(K, K)) / np.sqrt(K)
    return (rng.normal(size=(T, K)) @ mix + 0.05 * rng.normal(size=(T, K))).astype(np.float32)


def output_error(x: np.ndarray, w: np.ndarray, w_hat) -> float:
    return float(np.linalg.norm(x.astype(np.float64) @ (w - np.asarray(w_hat, np.float64))))


@pytest.mark.parametrize("fmt, group", [("int4", 128), ("int4_full", 128), ("uint4", 64),
                                        ("int3", 128), ("int8", None), ("mxfp4", None)])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_on_the_same_grid(fmt, group, act_order):
    x = correlated_inputs()
    w = np.random.default_rng(1).normal(size=(K, N)).astype(np.float32) * 0.05
    scheme = WeightScheme(fmt, group_size=group) if fmt != "mxfp4" else WeightScheme(fmt)
    spec = scheme.resolve((K, N), 0, "w")
    q = gptq_quantize(jnp.asarray(w), jnp.asarray(x.T @ x), spec, act_order=act_order)
    rtn = quantize_array(jnp.asarray(w), spec)
    assert q.qvalue.shape == rtn.qvalue.shape and q.qvalue.dtype == rtn.qvalue.dtype
    assert output_error(x, w, q.dequantize()) < 0.85 * output_error(x, w, rtn.dequantize())
    # every value is on the legal grid: requantizing with GPTQ's own scales changes nothing
    deq = np.asarray(q.dequantize(), np.float64)
    scale = np.repeat(np.asarray(q.block_scale(), np.float64), spec.block_shape[0], axis=0)[:K]
    codes = np.asarray(q.codes())
    values = np.asarray(jq.get_format(fmt).codec.decode(codes), np.float64)
    if q.zero_point is not None:
        zp = np.repeat(np.asarray(q.zero_point, np.float64), spec.block_shape[0], axis=0)[:K]
        values = values - zp
    np.testing.assert_allclose(deq, values * scale, rtol=1e-6, atol=1e-12)
    if fmt.startswith("int"):
        lo, hi = jq.get_format(fmt).codec.code_bounds
        v = np.asarray(jq.get_format(fmt).codec.decode(codes))
        assert v.min() >= lo and v.max() <= hi


def test_act_order_keeps_contiguous_groups_in_stored_layout():
    x = correlated_inputs(3)
    x[:, 5] *= 30  # one dominant channel moves to the front of the sweep
    w = np.random.default_rng(2).normal(size=(K, N)).astype(np.float32)
    spec = WeightScheme("int4", group_size=64).resolve((K, N), 0, "w")
    q = gptq_quantize(jnp.asarray(w), jnp.asarray(x.T @ x), spec, act_order=True)
    assert q.meta.block_shape == (64, 1) and q.scale.shape == (K // 64, N)
    assert q.qvalue.shape == (K // 2, N)


def test_dead_inputs_and_dampening():
    x = correlated_inputs()
    x[:, :8] = 0.0  # dead channels: H has zero rows
    w = np.random.default_rng(4).normal(size=(K, N)).astype(np.float32)
    spec = WeightScheme("int4", group_size=128).resolve((K, N), 0, "w")
    q = gptq_quantize(jnp.asarray(w), jnp.asarray(x.T @ x), spec)
    assert np.all(np.isfinite(np.asarray(q.dequantize())))
    # a rank-deficient Hessian is made positive definite by dampening
    h = np.ones((K, K), np.float32)
    u, damp = inverse_hessian_factor(jnp.asarray(h), 0.01)
    assert np.all(np.isfinite(np.asarray(u))) and damp >= 0.01


def test_hopeless_hessian_is_a_clear_error():
    h = jnp.full((8, 8), jnp.nan)
    with pytest.raises(JaxquantError, match="not positive definite"):
        inverse_hessian_factor(h, 0.01)


def test_gptq_rejects_formats_it_cannot_apply_to():
    with pytest.raises(RecipeError, match="gptq cannot apply"):
        jq.Rule(("re:kernel$",), WeightScheme("fp8_e4m3", "tensor"), method="gptq")
    with pytest.raises(RecipeError, match="gptq cannot apply"):
        jq.Rule(("re:kernel$",), WeightScheme("nvfp4"), method="gptq")
    with pytest.raises(RecipeError, match="needs an activation scheme"):
        jq.Rule(("re:kernel$",), WeightScheme("int8"), method="smoothquant")


def test_quantize_without_calibration_data_explains():
    params = {"dense": {"kernel": jnp.ones((128, 8))}}
    with pytest.raises(RecipeError, match="needs calibration data"):
        jq.quantize(params, "w4a16-gptq")


def gptq_reference(w: np.ndarray, h: np.ndarray, group: int, qmax: float, damp: float,
                   bounds: tuple[float, float] | None = None) -> np.ndarray:
    """The GPTQ sweep in float64, one row at a time without lazy blocks: symmetric integer
    codes (scale amax / qmax, codes clipped to `bounds`, default [-qmax, qmax]), the scale of
    each group from its current (error-compensated) rows when the sweep reaches its first row.
    Returns the dequantized weights."""
    lo, hi = bounds or (-qmax, qmax)
    k = w.shape[0]
    w = w.astype(np.float64).copy()
    h = h.astype(np.float64) + damp * np.mean(np.diag(h)) * np.eye(k)
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    out = np.zeros_like(w)
    for i in range(k):
        if i % group == 0:
            amax = np.abs(w[i: i + group]).max(axis=0)
            s = np.where(amax > 0, amax / qmax, 1.0)
        out[i] = np.clip(np.round(w[i] / s), lo, hi) * s
        err = (w[i] - out[i]) / u[i, i]
        w[i + 1:] -= np.outer(u[i, i + 1:], err)
    return out


@pytest.mark.parametrize("k, group, fmt, block_size", [(256, 64, "int4", 128), (200, 64, "int3", 128),
                                                       (192, 96, "int4", 128), (256, 128, "int4", 32),
                                                       (200, 64, "int4_full", 128)])
def test_gptq_matches_float64_reference_sweep(k, group, fmt, block_size):
    """Lazy blocks, padding of a ragged K and group/block alignment leave the sweep's result
    equal to the plain row-by-row algorithm in float64 (up to rare rounding-tie flips)."""
    rng = np.random.default_rng(7)
    x = (rng.normal(size=(4 * k, k)) @ (rng.normal(size=(k, k)) / np.sqrt(k))).astype(np.float32)
    w = (rng.normal(size=(k, 48)) * 0.05).astype(np.float32)
    h = (x.T @ x).astype(np.float32)
    spec = WeightScheme(fmt, group_size=group, ragged_groups=True).resolve((k, 48), 0, "w")
    q = gptq_quantize(jnp.asarray(w), jnp.asarray(h), spec, damp=0.01, block_size=block_size)
    codec = jq.get_format(fmt).codec
    ref = gptq_reference(w, h, group, codec.qmax, 0.01, codec.code_bounds)
    ours = np.asarray(q.dequantize(), np.float64)
    assert np.mean(np.isclose(ours, ref, rtol=1e-4, atol=1e-7)) > 0.98
    err_ours, err_ref = output_error(x, w, ours), output_error(x, w, ref)
    assert abs(err_ours - err_ref) < 0.02 * err_ref


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_with_mse_clipped_group_scales(act_order):
    """The scheme's MSE clip search picks each group's range inside the sweep: the result is on
    the grid of its stored scales and beats RTN with the same clipping."""
    from jaxquant.core.spec import Clipping

    x = correlated_inputs(5)
    w = np.random.default_rng(6).standard_t(3, size=(K, N)).astype(np.float32) * 0.05
    spec = WeightScheme("int4", group_size=64, clipping=Clipping("mse")).resolve((K, N), 0, "w")
    q = gptq_quantize(jnp.asarray(w), jnp.asarray(x.T @ x), spec, act_order=act_order)
    rtn = quantize_array(jnp.asarray(w), spec)
    assert output_error(x, w, q.dequantize()) < 0.85 * output_error(x, w, rtn.dequantize())
    scale = np.repeat(np.asarray(q.block_scale(), np.float64), 64, axis=0)
    codes = np.asarray(jq.get_format("int4").codec.decode(q.codes()), np.float64)
    np.testing.assert_allclose(np.asarray(q.dequantize(), np.float64), codes * scale,
                               rtol=1e-6, atol=1e-12)
    assert np.abs(codes).max() <= 7
