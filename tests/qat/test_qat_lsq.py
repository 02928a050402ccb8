"""LSQ learnable scales: the forward equals quantize_with_scales + dequantize, the gradient of
the log-scales matches a float64 finite difference of the straight-through surrogate, and scales
stay positive whatever the optimizer does."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxquant as jq
from jaxquant.core import blocks
from jaxquant.core.quantize import quantize_with_scales
from jaxquant.core.scales import Scales
from jaxquant.core.spec import ArraySpec
from jaxquant.errors import FormatError, JaxquantError
from jaxquant.qat import lsq_weight
from jaxquant.qat.lsq import check_learnable, lsq_grad_scale, stored_scale
from jaxquant.qat.train import check_schedule

LEVELS = {"fp4_e2m1": np.array([0, .5, 1, 1.5, 2, 3, 4, 6], np.float64),
          "nf4": np.array(jq.formats.NF4_LEVELS, np.float64)}


def _grid_values(fmt: str) -> tuple[np.ndarray, float, float]:
    """(representable values of x / s + zp, lo, hi) in float64."""
    f = jq.get_format(fmt)
    if fmt.startswith("uint"):
        return np.arange(f.codec.levels + 1, dtype=np.float64), 0.0, float(f.codec.levels)
    if fmt.startswith("int"):
        q = f.codec.qmax
        return np.arange(-q, q + 1, dtype=np.float64), -q, q
    mags = LEVELS[fmt]  # NF4: all 16 signed levels (not symmetric); E2M1: magnitudes
    vals = mags if fmt == "nf4" else np.unique(np.concatenate([mags, -mags]))
    return vals, float(vals[0]), float(vals[-1])


def _surrogate(x, log_s, zp, fmt, block, r0, inside0):
    """Straight-through surrogate in float64: round() replaced by the identity plus the frozen
    rounding residual r0, the clip recomputed at the perturbed scale."""
    _, lo, hi = _grid_values(fmt)
    s = np.exp(log_s)
    se = _expand(s, x.shape, block)
    z = _expand(zp, x.shape, block) if zp is not None else 0.0
    v = x / se + z
    return np.where(inside0, (np.clip(v, lo, hi) + r0 - z) * se, (np.clip(v, lo, hi) - z) * se)


def _expand(g, shape, block):
    out = g
    for ax, b in enumerate(block):
        out = np.repeat(out, b, axis=ax)
    return out[tuple(slice(0, n) for n in shape)]


@pytest.mark.parametrize("fmt", ["int4", "int3", "uint4", "fp4_e2m1", "nf4"])
def test_lsq_log_scale_gradient_matches_finite_difference(fmt):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(40, 3)).astype(np.float32)  # ragged: groups of 16 along 40
    block = (16, 1)
    spec = ArraySpec(fmt, block, 0, "group")
    vals, lo, hi = _grid_values(fmt)
    grid = blocks.grid_shape(x.shape, block)
    # scales small enough that some elements clip
    amax = np.abs(np.pad(x, ((0, 8), (0, 0)))).reshape(3, 16, 3).max(1)
    log_s = np.log(0.8 * amax / hi).astype(np.float32)
    zp = np.full(grid, 7.0, np.float32) if fmt.startswith("uint") else None
    g = rng.normal(size=x.shape).astype(np.float32)

    loss = lambda ls: jnp.sum(lsq_weight(jnp.asarray(x), ls, None if zp is None else  # noqa: E731
                                         jnp.asarray(zp), spec) * g)
    grad = np.asarray(jax.grad(loss)(jnp.asarray(log_s)), np.float64)

    x64, s64 = x.astype(np.float64), np.exp(log_s.astype(np.float64))
    z = _expand(zp, x.shape, block).astype(np.float64) if zp is not None else 0.0
    v0 = x64 / _expand(s64, x.shape, block) + z
    q0 = vals[np.argmin(np.abs(np.clip(v0, lo, hi)[..., None] - vals), axis=-1)]
    inside0 = (v0 >= lo) & (v0 <= hi)
    assert (~inside0).sum() > 0 and inside0.sum() > 0
    r0 = np.where(inside0, q0 - v0, 0.0)
    h = 1e-6
    fd = np.zeros(grid)
    for idx in np.ndindex(*grid):
        e = np.zeros(grid)
        e[idx] = h
        up = _surrogate(x64, log_s + e, zp, fmt, block, r0, inside0)
        dn = _surrogate(x64, log_s - e, zp, fmt, block, r0, inside0)
        fd[idx] = np.sum(g * (up - dn)) / (2 * h)
    np.testing.assert_allclose(grad, fd * lsq_grad_scale(spec), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fmt,scale_dtype", [("int4", "float32"), ("uint3", "bfloat16"),
                                             ("fp8_e4m3", "float32"), ("nf4", "bfloat16")])
def test_lsq_forward_is_the_real_quantizer(fmt, scale_dtype):
    x = jax.random.normal(jax.random.key(0), (50, 4))
    spec = ArraySpec(fmt, (16, 1), 0, "group", scale_dtype=scale_dtype)
    q0 = jq.quantize_array(x, spec)
    log_s = jnp.log(q0.block_scale()) + 0.05
    zp = None if q0.zero_point is None else q0.zero_point.astype(jnp.float32)
    y = lsq_weight(x, log_s, zp, spec)
    s = stored_scale(log_s, spec)
    assert s.dtype == jnp.dtype(scale_dtype)
    q = quantize_with_scales(x, spec, Scales(s, q0.zero_point, s.astype(jnp.float32)))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(q.dequantize()))
    dx = jax.grad(lambda v: jnp.sum(lsq_weight(v, log_s, zp, spec)))(x)
    assert set(np.unique(np.asarray(dx))) <= {0.0, 1.0}


def test_scales_stay_positive_under_any_step():
    x = jax.random.normal(jax.random.key(1), (32, 8))
    spec = ArraySpec("int4", (32, 1), 0, "group")
    log_s = jnp.log(jq.quantize_array(x, spec).block_scale())
    opt = optax.sgd(1e4)  # absurdly large steps in both directions
    state = opt.init(log_s)
    for sign in (1.0, -1.0, 1.0):
        g = jax.grad(lambda ls: sign * jnp.sum(lsq_weight(x, ls, None, spec) ** 2))(log_s)
        upd, state = opt.update(g, state)
        log_s = optax.apply_updates(log_s, upd)
        s = stored_scale(log_s, spec)
        assert bool(jnp.all(s > 0)) and bool(jnp.all(jnp.isfinite(lsq_weight(x, log_s, None,
                                                                              spec))))


def test_bad_schedules_and_formats_are_errors():
    with pytest.raises(JaxquantError, match="learning_rate is 0.0 at step 5"):
        check_schedule(optax.linear_schedule(1e-3, -1e-3, 10), 10)
    with pytest.raises(JaxquantError, match="learning_rate is 0.0 at step 0"):
        check_schedule(0.0, 5)
    with pytest.raises(JaxquantError, match="learning_rate is nan"):
        check_schedule(float("nan"), 5)
    check_schedule(optax.cosine_decay_schedule(1e-3, 10, alpha=0.1), 10)
    for fmt, dq, what in [("mxfp4", False, "E8M0"), ("nvfp4", False, "E4M3"),
                          ("nf4", True, "double-quantized")]:
        spec = ArraySpec(fmt, (32 if fmt == "mxfp4" else 16, 1), 0, "group", double_quant=dq)
        with pytest.raises(FormatError, match=f"no differentiable scale path.*{what}"):
            check_learnable(spec, "w")
