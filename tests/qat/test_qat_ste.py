"""Straight-through fake quantization against the float64 NumPy reference: the forward is the
real round trip, the gradient is the upstream gradient inside the clipping range, 0 outside."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxquant as jq
from jaxquant.core.spec import ArraySpec, Clipping
from jaxquant.qat import fake_quant_activation, fake_quant_ste

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import numpy_reference as R  # noqa: E402

# format -> block (contraction axis 0); 70 rows make every group-wise case ragged
CASES = {
    "int4": (32, 1), "int3": (16, 1), "int2": (70, 1), "uint4": (32, 1), "int8": (1, 6),
    "fp8_e4m3": (32, 1), "fp4_e2m1": (16, 1), "nf4": (64, 1), "mxfp4": (32, 1),
    "nvfp4": (16, 1),
}
ELEMENT_RANGE = {"fp4_e2m1": 6.0, "nf4": 1.0, "mxfp4": 6.0, "nvfp4": 6.0, "fp8_e4m3": 448.0}


def _x(seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(70, 6)).astype(np.float32)
    x[3, 2] = 40.0  # an outlier
    x[32:48, 4] = 0.0  # an all-zero group
    return x


def _reference_mask(x: np.ndarray, fmt: str, block, clipping: dict
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(inside the clipping range, near its boundary) from the float64 reference scales."""
    ref = R.reference_quantize(x, fmt, block, double_quant=fmt == "nf4", clipping=clipping)
    scale = R.broadcast_blocks(np.asarray(ref.scale, np.float64), x.shape, block)
    y = x.astype(np.float64) / R.nonzero_scale(scale)
    if ref.zero_point is not None:
        y = y + R.broadcast_blocks(np.asarray(ref.zero_point, np.float64), x.shape, block)
        lo, hi = 0.0, float(R.uint_levels(fmt))
    elif fmt in R.INT_BITS:
        lo, hi = -float(R.int_qmax(fmt)), float(R.int_qmax(fmt))
    else:
        hi = ELEMENT_RANGE[fmt]
        lo = -hi
    near = (np.abs(y - hi) <= 1e-4 * hi) | (np.abs(y - lo) <= 1e-4 * max(abs(lo), 1.0))
    return (y >= lo) & (y <= hi), near | ref.ambiguous


@pytest.mark.parametrize("clip", ["minmax", "percentile"])
@pytest.mark.parametrize("fmt", sorted(CASES))
def test_ste_forward_and_gradient_match_reference(fmt, clip):
    x = _x(hash((fmt, clip)) % 1000)
    block = CASES[fmt]
    clipping = {"method": clip, "percentile": 90.0} if clip == "percentile" else None
    spec = ArraySpec(fmt, block, 0, "group", clipping=Clipping(**(clipping or {})),
                     double_quant=fmt == "nf4")
    g = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
    y, vjp = jax.vjp(lambda v: fake_quant_ste(v, spec), jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(jq.fake_quantize(jnp.asarray(x), spec)))
    (dx,) = vjp(jnp.asarray(g))
    inside, unsure = _reference_mask(x, fmt, block, clipping)
    dx = np.asarray(dx)
    sure = ~unsure
    np.testing.assert_array_equal(dx[sure & inside], g[sure & inside])
    np.testing.assert_array_equal(dx[sure & ~inside], 0.0)
    assert set(np.unique(dx[unsure])) <= set(np.unique(np.concatenate([g[unsure], [0.0]])))
    if clip == "percentile":  # the clipped outlier and tails really get zero gradient
        assert (~inside & sure).sum() > 0 and dx[3, 2] == 0.0


def test_ste_nonfinite_and_bf16():
    x = _x(5)
    x[0, 0], x[1, 1] = np.nan, np.inf
    spec = ArraySpec("int4", (32, 1), 0, "group")
    dx = jax.grad(lambda v: jnp.sum(jnp.where(jnp.isfinite(fake_quant_ste(v, spec)),
                                              fake_quant_ste(v, spec), 0.0)))(jnp.asarray(x))
    assert dx[0, 0] == 0 and dx[1, 1] == 0  # NaN / Inf are outside every range
    xb = jnp.asarray(_x(6), jnp.bfloat16)
    y, vjp = jax.vjp(lambda v: fake_quant_ste(v, spec), xb)
    assert y.dtype == jnp.bfloat16 and vjp(jnp.ones_like(xb))[0].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(y, np.float32),
                                  np.asarray(jq.fake_quantize(xb, spec), np.float32))


@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8_e4m3"])
@pytest.mark.parametrize("granularity", ["token", "tensor"])
def test_activation_ste_matches_reference(fmt, granularity):
    x = np.random.default_rng(2).normal(size=(3, 5, 48)).astype(np.float32)
    x[0, 0, 7] = 30.0
    spec = jq.activation_scheme(fmt, granularity)
    y, vjp = jax.vjp(lambda v: fake_quant_activation(v, spec, (2,)), jnp.asarray(x))
    x64 = x.astype(np.float64)
    axes = (2,) if granularity == "token" else (0, 1, 2)
    qmax = R.element_qmax(fmt) if fmt.startswith("fp8") else R.int_qmax(fmt)
    s = np.maximum(np.abs(x64).max(axis=axes, keepdims=True), 0) / qmax
    v = x64 / s
    ref = (np.clip(R.round_half_even(v), -qmax, qmax) if fmt.startswith("int")
           else R.fp8_cast(v, fmt)) * s
    np.testing.assert_allclose(np.asarray(y), ref, rtol=2e-6 if fmt.startswith("int") else 0.07,
                               atol=1e-6)
    g = np.random.default_rng(3).normal(size=x.shape).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(vjp(jnp.asarray(g))[0]), g)  # dynamic: all inside
