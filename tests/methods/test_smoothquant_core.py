"""SmoothQuant core: the scale formula and its guards, exactness of the transform in float64,
lower W8A8 error with outlier channels, folding, and bad-input errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxquant.core.activations import quantize_activation
from jaxquant.core.quantize import fake_quantize
from jaxquant.core.spec import ActivationSpec
from jaxquant.errors import JaxquantError
from jaxquant.methods.awq_core import fold_into_norm
from jaxquant.methods.smoothquant_core import SmoothResult, smooth, smoothing_scales
from jaxquant.recipes.schemes import WeightScheme

T, K, N = 256, 512, 256
OUTLIERS = (5, 100, 333, 480)


@pytest.fixture(scope="module")
def outlier_acts():
    """Activations with a few channels ~60x the rest (as in LLM residual streams)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, K)).astype(np.float32)
    x[:, list(OUTLIERS)] *= 60.0
    w1 = (rng.standard_normal((K, N)) * 0.05).astype(np.float32)
    w2 = (rng.standard_normal((K, N // 2)) * 0.08).astype(np.float32)
    return x, w1, w2


def _ref_scales(a, ws, alpha):
    a = np.abs(a.astype(np.float64))
    w = np.max(np.stack([np.max(np.abs(wi.astype(np.float64)), axis=1) for wi in ws]), axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = a ** alpha / w ** (1 - alpha)
    return np.where((a > 0) & (w > 0), np.maximum(s, 1e-5), 1.0)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.85, 1.0])
def test_smoothing_scales_match_float64_formula(outlier_acts, alpha):
    x, w1, w2 = outlier_acts
    amax = np.max(np.abs(x), axis=0)
    amax[7] = 0.0  # a dead channel
    w1 = w1.copy()
    w1[9] = 0.0  # a channel with zero weights in w1 only: w2 still defines its max
    w2 = w2.copy()
    w1[11] = 0.0
    w2[11] = 0.0  # zero weights in every layer
    s = smoothing_scales(jnp.asarray(amax), [jnp.asarray(w1), jnp.asarray(w2)], alpha)
    assert s.shape == (K,) and s.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(s), _ref_scales(amax, [w1, w2], alpha), rtol=1e-5)
    assert float(s[7]) == 1.0 and float(s[11]) == 1.0
    assert np.all(np.isfinite(np.asarray(s))) and np.all(np.asarray(s) > 0)


def test_transform_is_exact_before_quantization(outlier_acts):
    x, w1, w2 = outlier_acts
    res = smooth(jnp.max(jnp.abs(jnp.asarray(x)), axis=0), [jnp.asarray(w1), jnp.asarray(w2)], 0.5)
    assert isinstance(res, SmoothResult) and len(res.weights) == 2
    s = np.asarray(res.scales, np.float64)
    x64 = x.astype(np.float64)
    for w, ws in zip((w1, w2), res.weights):
        assert ws.dtype == jnp.float32 and ws.shape == w.shape
        ref = x64 @ w.astype(np.float64)
        got = (x64 / s) @ np.asarray(ws, np.float64)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())


def _w8a8(x, w):
    """int8 per-token activations x int8 per-channel weights, dequantized product in float64."""
    xq, sx = quantize_activation(jnp.asarray(x), ActivationSpec("int8", "token"), (1,))
    wq = fake_quantize(jnp.asarray(w), WeightScheme("int8").resolve(w.shape, 0, "w"))
    x_hat = np.asarray(xq, np.float64) * np.asarray(sx, np.float64)
    return x_hat @ np.asarray(wq, np.float64)


def test_smoothing_lowers_w8a8_error_with_outliers(outlier_acts):
    x, w1, _ = outlier_acts
    ref = x.astype(np.float64) @ w1.astype(np.float64)
    rel = lambda y: float(np.linalg.norm(y - ref) / np.linalg.norm(ref))  # noqa: E731
    plain = rel(_w8a8(x, w1))
    amax = jnp.max(jnp.abs(jnp.asarray(x)), axis=0)
    errs = {}
    for alpha in (0.5, 0.8):
        (ws,), s = smooth(amax, [jnp.asarray(w1)], alpha)
        errs[alpha] = rel(_w8a8(np.asarray(jnp.asarray(x) / s), np.asarray(ws)))
    print(f"\n[W8A8] relative output error: no smoothing {plain:.4f}, "
          + ", ".join(f"alpha={a}: {e:.4f}" for a, e in errs.items()))
    assert errs[0.5] < 0.5 * plain
    assert errs[0.8] < plain


def test_fold_smoothing_into_norm(outlier_acts):
    """Folding 1 / s into the RMSNorm scale leaves the float layer unchanged."""
    x, w1, _ = outlier_acts
    g = np.random.default_rng(1).uniform(0.5, 1.5, K).astype(np.float32)
    x64 = x.astype(np.float64)
    normed = x64 / np.sqrt(np.mean(x64 ** 2, axis=-1, keepdims=True) + 1e-6)
    amax = jnp.asarray(np.max(np.abs(normed * g), axis=0), jnp.float32)
    (ws,), s = smooth(amax, [jnp.asarray(w1)], 0.5)
    g2 = np.asarray(fold_into_norm(jnp.asarray(g), s), np.float64)
    ref = (normed * g.astype(np.float64)) @ w1.astype(np.float64)
    got = (normed * g2) @ np.asarray(ws, np.float64)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_jittable_with_traced_alpha(outlier_acts):
    x, w1, _ = outlier_acts
    amax = jnp.max(jnp.abs(jnp.asarray(x)), axis=0)
    f = jax.jit(lambda a, w, alpha: smoothing_scales(a, [w], alpha))
    np.testing.assert_allclose(np.asarray(f(amax, jnp.asarray(w1), 0.7)),
                               np.asarray(smoothing_scales(amax, [jnp.asarray(w1)], 0.7)),
                               rtol=1e-6)


def test_bad_inputs():
    a = jnp.ones(K)
    w = jnp.ones((K, N))
    for alpha in (-0.1, 1.5, float("nan")):
        with pytest.raises(JaxquantError, match="alpha"):
            smoothing_scales(a, [w], alpha)
    with pytest.raises(JaxquantError, match="alpha"):
        smooth(a, [w], 2)
    with pytest.raises(JaxquantError, match=r"weights\[0\].*K=512"):
        smoothing_scales(a, [jnp.ones((K - 1, N))], 0.5)
    with pytest.raises(JaxquantError, match=r"weights\[1\]"):
        smooth(a, [w, jnp.ones((N, K))], 0.5)
    with pytest.raises(JaxquantError, match="act_absmax"):
        smoothing_scales(jnp.ones((4, K)), [w], 0.5)
    with pytest.raises(JaxquantError, match="list"):
        smoothing_scales(a, w, 0.5)


def _w8a8_error64(x, ws, s, wspec_fn):
    """sum_i ||X W_i - Qa(X / s) Qw(W_i s)||^2 in float64 (per-token int8 activations with
    scale amax / 127, per-channel int8 weights), the alpha search's objective."""
    x64, s64 = x.astype(np.float64), np.asarray(s, np.float64)
    xs = x64 / s64
    sx = np.abs(xs).max(axis=1, keepdims=True) / 127.0
    x_hat = np.clip(np.rint(xs / sx), -127, 127) * sx
    err = 0.0
    for w in ws:
        wsc = w.astype(np.float64) * s64[:, None]
        sw = np.abs(wsc).max(axis=0, keepdims=True) / 127.0
        w_hat = np.clip(np.rint(wsc / sw), -127, 127) * sw
        err += np.sum((x64 @ w.astype(np.float64) - x_hat @ w_hat) ** 2)
    return err


def test_alpha_search_minimizes_the_w8a8_error(outlier_acts):
    from jaxquant.methods.smoothquant_core import alpha_search

    x, w1, w2 = outlier_acts
    ws = [jnp.asarray(w1), jnp.asarray(w2)]
    specs = [WeightScheme("int8").resolve(w.shape, 0, "w") for w in ws]
    amax = jnp.max(jnp.abs(jnp.asarray(x)), axis=0)
    res = alpha_search(jnp.asarray(x), amax, ws, specs, ActivationSpec("int8", "token"), grid=10)
    assert res.errors.shape == (11,) and res.scales.shape == (K,)
    ref = [_w8a8_error64(x, [w1, w2], smoothing_scales(amax, ws, i / 10), None)
           for i in range(11)]
    np.testing.assert_allclose(np.asarray(res.errors, np.float64), ref, rtol=2e-3)
    best = int(np.argmin(ref))
    assert float(res.alpha) == pytest.approx(best / 10)
    np.testing.assert_allclose(np.asarray(res.scales),
                               np.asarray(smoothing_scales(amax, ws, best / 10)), rtol=1e-6)
    assert ref[best] < 0.5 * ref[0]  # smoothing outlier channels pays off


def test_alpha_search_bad_inputs(outlier_acts):
    from jaxquant.methods.smoothquant_core import alpha_search

    x, w1, _ = outlier_acts
    spec = WeightScheme("int8").resolve(w1.shape, 0, "w")
    act = ActivationSpec("int8", "token")
    amax = jnp.ones(K)
    with pytest.raises(JaxquantError, match="act_absmax"):
        alpha_search(jnp.asarray(x), jnp.ones(K - 1), [jnp.asarray(w1)], spec, act)
    with pytest.raises(JaxquantError, match="non-empty"):
        alpha_search(jnp.ones((0, K)), amax, [jnp.asarray(w1)], spec, act)
    with pytest.raises(JaxquantError, match="grid"):
        alpha_search(jnp.asarray(x), amax, [jnp.asarray(w1)], spec, act, grid=0)
    with pytest.raises(JaxquantError, match="ActivationSpec"):
        alpha_search(jnp.asarray(x), amax, [jnp.asarray(w1)], spec, "int8")
