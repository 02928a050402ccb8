"""AWQ core: scale search vs RTN on a salient channel, float64 NumPy error references, clip
search, folding identities and bad-input errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxquant.core.quantize import fake_quantize
from jaxquant.errors import FormatError, JaxquantError
from jaxquant.methods.awq_core import (
    AWQResult,
    apply_clip,
    awq_clip_search,
    awq_search,
    awq_search_from_stats,
    fold_into_linear_outputs,
    fold_into_norm,
    scale_weights,
)
from jaxquant.recipes.schemes import WeightScheme

T, K, N = 512, 256, 128
SALIENT = 37


def _spec(fmt="int4", shape=(K, N), group=128):
    return WeightScheme(fmt, group_size=group).resolve(shape, 0, "w")


@pytest.fixture(scope="module")
def salient():
    """X with one input channel 50x the others whose weights are 10x smaller than the rest."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, K)).astype(np.float32)
    x[:, SALIENT] *= 50.0
    w = rng.standard_normal((K, N)).astype(np.float32)
    w[SALIENT] *= 0.1
    return x, w


def _out_err64(x, w, w_hat) -> float:
    """||X W - X W_hat||_F^2 in float64."""
    x64, d = np.asarray(x, np.float64), np.asarray(w, np.float64) - np.asarray(w_hat, np.float64)
    return float(np.sum((x64 @ d) ** 2))


def _awq_w_hat(w, s, spec):
    """Q(W s) / s: the effective weight the layer applies to x."""
    s = np.asarray(s, np.float32)
    return np.asarray(fake_quantize(jnp.asarray(w * s[:, None]), spec), np.float64) / s[:, None]


@pytest.mark.parametrize("fmt,max_ratio", [("int4", 0.3), ("int3", 0.6)])
def test_awq_protects_salient_channel(salient, fmt, max_ratio):
    x, w = salient
    spec = _spec(fmt)
    rtn = np.asarray(fake_quantize(jnp.asarray(w), spec))
    # RTN destroys the salient row: its small weights mostly round to zero
    assert np.mean(rtn[SALIENT] == 0) > 0.5
    res = awq_search(jnp.asarray(x), [jnp.asarray(w)], spec, grid=20)
    assert isinstance(res, AWQResult)
    assert res.scales.shape == (K,) and res.scales.dtype == jnp.float32
    assert res.errors.shape == (20,)
    err_rtn = _out_err64(x, w, rtn)
    err_awq = _out_err64(x, w, _awq_w_hat(w, res.scales, spec))
    ratio = err_awq / err_rtn
    print(f"\n[{fmt} g128] RTN err {err_rtn:.4g}  AWQ err {err_awq:.4g}  ratio {ratio:.3f}  "
          f"alpha {float(res.alpha):.2f}")
    assert float(res.alpha) > 0
    assert ratio < max_ratio
    # the salient channel gets the largest scale; normalization: sqrt(max * min) = 1
    s = np.asarray(res.scales)
    assert int(np.argmax(s)) == SALIENT
    np.testing.assert_allclose(np.sqrt(s.max() * s.min()), 1.0, rtol=1e-5)
    # the reported errors are the float64 output errors at alpha = 0 (RTN) and at the best alpha
    np.testing.assert_allclose(float(res.errors[0]), err_rtn, rtol=1e-4)
    np.testing.assert_allclose(float(jnp.min(res.errors)), err_awq, rtol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_screened_search_matches_exhaustive(seed):
    """The opt-in column screen (screen=4: every 4th output column, then RTN and the 3 best
    alphas on every column) chooses an alpha whose exact error is within 1% of the exhaustive
    grid's best (screen=1, the default), on correlated activations with outlier channels."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((K, K)).astype(np.float32) / np.sqrt(K)
    x = rng.standard_normal((T, K)).astype(np.float32) @ mix + 0.3 * rng.standard_normal((T, K))
    x[:, rng.choice(K, 6, replace=False)] *= 30.0
    x = x.astype(np.float32)
    w = rng.standard_normal((K, 256)).astype(np.float32)
    spec = _spec(shape=(K, 256), group=64)
    full = awq_search(jnp.asarray(x), [jnp.asarray(w)], spec, grid=20, screen=1)
    fast = awq_search(jnp.asarray(x), [jnp.asarray(w)], spec, grid=20, screen=4)
    best = _out_err64(x, w, _awq_w_hat(w, full.scales, spec))  # float64 reference
    np.testing.assert_allclose(float(jnp.min(full.errors)), best, rtol=2e-4)
    chosen = _out_err64(x, w, _awq_w_hat(w, fast.scales, spec))
    assert chosen <= 1.01 * best
    i = round(float(fast.alpha) * 20)
    np.testing.assert_allclose(float(fast.errors[i]), float(full.errors[i]), rtol=1e-5)
    np.testing.assert_allclose(float(fast.errors[0]), float(full.errors[0]), rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_refined_search_scores_11_points_and_finds_the_grid_minimum(seed):
    """refine=True scores alphas 0, 4, 8, 12, 16 (of 20) and the 3 on each side of their best;
    on these correlated activations (error unimodal along the grid) it picks the exhaustive
    grid's alpha, with the same errors where it scored and NaN elsewhere."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, K)).astype(np.float32)
    x[:, rng.choice(K, 6, replace=False)] *= 30.0
    w = rng.standard_normal((K, N)).astype(np.float32)
    spec = _spec(group=64)
    full = awq_search(jnp.asarray(x), [jnp.asarray(w)], spec, grid=20)
    fast = awq_search(jnp.asarray(x), [jnp.asarray(w)], spec, grid=20, refine=True)
    e_full, e_fast = np.asarray(full.errors), np.asarray(fast.errors)
    scored = np.flatnonzero(~np.isnan(e_fast))
    assert 0 in scored and len(scored) <= 11 and set(range(0, 20, 4)) <= set(scored)
    np.testing.assert_allclose(e_fast[scored], e_full[scored], rtol=1e-5)
    assert float(fast.alpha) == float(full.alpha)
    np.testing.assert_array_equal(np.asarray(fast.scales), np.asarray(full.scales))
    # composes with the column screen: RTN and the chosen alpha exact on every column
    both = awq_search(jnp.asarray(x), [jnp.asarray(w)], spec, grid=20, refine=True, screen=4)
    i = round(float(both.alpha) * 20)
    np.testing.assert_allclose(float(both.errors[i]), e_full[i], rtol=1e-5)
    np.testing.assert_allclose(float(both.errors[0]), e_full[0], rtol=1e-5)


def test_refine_on_a_small_grid_scores_every_point(salient):
    x, w = salient
    res = awq_search(jnp.asarray(x), [jnp.asarray(w)], _spec(), grid=8, refine=True)
    full = awq_search(jnp.asarray(x), [jnp.asarray(w)], _spec(), grid=8)
    np.testing.assert_array_equal(np.asarray(res.errors), np.asarray(full.errors))


def test_alpha_zero_is_rtn(salient):
    x, w = salient
    spec = _spec()
    res = awq_search(jnp.asarray(x), [jnp.asarray(w)], spec, grid=1)
    assert float(res.alpha) == 0.0
    np.testing.assert_array_equal(np.asarray(res.scales), np.ones(K, np.float32))
    w_hat = fake_quantize(scale_weights(jnp.asarray(w), res.scales), spec) / res.scales[:, None]
    rtn = fake_quantize(jnp.asarray(w), spec)
    np.testing.assert_array_equal(np.asarray(w_hat), np.asarray(rtn))


@pytest.mark.parametrize("tokens", [96, 512])  # T <= K: ||X D||^2; T > K: Gram form
def test_errors_match_float64_reference_on_the_grid(salient, tokens):
    x, w = salient
    x = x[:tokens]
    spec = _spec()
    grid = 4
    res = awq_search(jnp.asarray(x), [jnp.asarray(w)], spec, grid=grid)
    xbar = np.mean(np.abs(x.astype(np.float64)), axis=0)
    for i in range(grid):
        s = xbar ** (i / grid)
        s = s / np.sqrt(s.max() * s.min())
        ref = _out_err64(x, w, _awq_w_hat(w, s.astype(np.float32), spec))
        np.testing.assert_allclose(float(res.errors[i]), ref, rtol=2e-4)
    stats = awq_search_from_stats(jnp.mean(jnp.abs(jnp.asarray(x)), 0),
                                  jnp.asarray(x.T.astype(np.float64) @ x, jnp.float32),
                                  [jnp.asarray(w)], spec, grid=grid)
    np.testing.assert_allclose(np.asarray(stats.errors), np.asarray(res.errors), rtol=2e-4)
    assert float(stats.alpha) == float(res.alpha)


def test_gram_form_with_dead_and_duplicate_channels():
    """A rank-deficient Gram (always-zero and duplicated input channels, T > K): the Gram-form
    errors stay finite and match the float64 reference, and AWQ still beats RTN."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((T, K)).astype(np.float32)
    x[:, :8] = 0.0
    x[:, 8:16] = x[:, 16:24]
    x[:, 40] *= 40.0
    w = rng.standard_normal((K, N)).astype(np.float32)
    spec = _spec()
    res = awq_search(jnp.asarray(x), [jnp.asarray(w)], spec, grid=6)
    errors = np.asarray(res.errors)
    assert np.all(np.isfinite(errors))
    rtn = _out_err64(x, w, fake_quantize(jnp.asarray(w), spec))
    np.testing.assert_allclose(errors[0], rtn, rtol=2e-4)
    chosen = _out_err64(x, w, _awq_w_hat(w, np.asarray(res.scales), spec))
    np.testing.assert_allclose(errors.min(), chosen, rtol=2e-4)
    assert chosen < rtn


def test_several_weights_with_their_own_specs(salient):
    x, w = salient
    rng = np.random.default_rng(1)
    w2 = rng.standard_normal((K, 64)).astype(np.float32)
    specs = [_spec(), WeightScheme("int8").resolve((K, 64), 0, "w2")]
    res = awq_search(jnp.asarray(x), [jnp.asarray(w), jnp.asarray(w2)], specs, grid=5)
    rtn = _out_err64(x, w, fake_quantize(jnp.asarray(w), specs[0])) + _out_err64(
        x, w2, fake_quantize(jnp.asarray(w2), specs[1]))
    np.testing.assert_allclose(float(res.errors[0]), rtn, rtol=1e-4)
    assert float(jnp.min(res.errors)) < 0.5 * rtn


def test_duo_scaling_keeps_rtn_as_grid_point_zero(salient):
    x, w = salient
    spec = _spec()
    res = awq_search(jnp.asarray(x), [jnp.asarray(w)], spec, grid=10, duo_scaling=True)
    rtn = _out_err64(x, w, fake_quantize(jnp.asarray(w), spec))
    np.testing.assert_allclose(float(res.errors[0]), rtn, rtol=1e-4)
    s = np.asarray(res.scales)
    assert np.all(np.isfinite(s)) and np.all(s > 0)
    assert _out_err64(x, w, _awq_w_hat(w, s, spec)) < 0.5 * rtn


def test_jit_and_bf16_weights(salient):
    x, w = salient
    spec = _spec()
    eager = awq_search(jnp.asarray(x), [jnp.asarray(w)], spec, grid=5)
    jitted = jax.jit(lambda x, w: awq_search(x, [w], spec, grid=5))(jnp.asarray(x), jnp.asarray(w))
    np.testing.assert_allclose(np.asarray(jitted.scales), np.asarray(eager.scales), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(jitted.errors), np.asarray(eager.errors), rtol=1e-5)
    bf = awq_search(jnp.asarray(x, jnp.bfloat16), [jnp.asarray(w, jnp.bfloat16)], spec, grid=5)
    assert bf.scales.dtype == jnp.float32 and float(bf.alpha) > 0
    assert scale_weights(jnp.asarray(w, jnp.bfloat16), bf.scales).dtype == jnp.bfloat16


def test_all_zero_activations_give_unit_scales():
    spec = _spec()
    w = jnp.asarray(np.random.default_rng(2).standard_normal((K, N)), jnp.float32)
    res = awq_search(jnp.zeros((16, K)), [w], spec, grid=4)
    np.testing.assert_array_equal(np.asarray(res.scales), np.ones(K, np.float32))
    assert float(res.alpha) == 0.0


# ------------------------------------------------------------------------------ clip search


@pytest.fixture(scope="module")
def heavy_tailed():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((T, K)).astype(np.float32)
    w = rng.standard_t(df=2.5, size=(K, N)).astype(np.float32)
    return x, w


@pytest.mark.parametrize("fmt,group", [("int4", 128), ("int3", 64), ("uint4", 128)])
def test_clip_search_lowers_output_error(heavy_tailed, fmt, group):
    x, w = heavy_tailed
    spec = _spec(fmt, group=group)
    ratios = awq_clip_search(jnp.asarray(x), jnp.asarray(w), spec, grid=20, max_shrink=0.5)
    assert ratios.shape == (K // group, N) and ratios.dtype == jnp.float32
    r = np.asarray(ratios)
    assert np.all((r >= 0.5 - 1e-6) & (r <= 1.0)) and np.any(r < 1.0)
    clipped = apply_clip(jnp.asarray(w), ratios, spec)
    before = _out_err64(x, w, fake_quantize(jnp.asarray(w), spec))
    after = _out_err64(x, w, fake_quantize(clipped, spec))
    print(f"\n[clip {fmt} g{group}] output err {before:.4g} -> {after:.4g} ({after / before:.3f})")
    assert after < 0.95 * before
    # ratio 1 everywhere is the identity
    ident = apply_clip(jnp.asarray(w), jnp.ones_like(ratios), spec)
    np.testing.assert_array_equal(np.asarray(ident), w)


def test_clip_search_per_channel_grid_shape(heavy_tailed):
    x, w = heavy_tailed
    spec = WeightScheme("int4").resolve((K, N), 0, "w")  # per-channel: block (K, 1)
    ratios = awq_clip_search(jnp.asarray(x), jnp.asarray(w), spec, grid=10, max_shrink=0.3)
    assert ratios.shape == (1, N)
    assert float(jnp.min(ratios)) >= 0.7 - 1e-6
    after = _out_err64(x, w, fake_quantize(apply_clip(jnp.asarray(w), ratios, spec), spec))
    assert after <= _out_err64(x, w, fake_quantize(jnp.asarray(w), spec))


# ---------------------------------------------------------------------------------- folding


def _rmsnorm64(x, g, eps=1e-6):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def _rand_scales(rng, k):
    return jnp.asarray(np.exp(rng.normal(0, 1.0, k)), jnp.float32)


def test_fold_into_norm_keeps_float_outputs():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((32, K))
    g = rng.uniform(0.5, 1.5, K).astype(np.float32)
    w = rng.standard_normal((K, N)).astype(np.float32)
    s = _rand_scales(rng, K)
    g2 = np.asarray(fold_into_norm(jnp.asarray(g), s), np.float64)
    w2 = np.asarray(scale_weights(jnp.asarray(w), s), np.float64)
    ref = _rmsnorm64(x, g.astype(np.float64)) @ w.astype(np.float64)
    np.testing.assert_allclose(_rmsnorm64(x, g2) @ w2, ref, rtol=1e-5,
                               atol=1e-5 * np.abs(ref).max())


def test_fold_into_linear_outputs_keeps_float_outputs():
    rng = np.random.default_rng(5)
    k_prev, k_mid = 96, K
    x = rng.standard_normal((32, k_prev))
    w_gate = rng.standard_normal((k_prev, k_mid)).astype(np.float32)
    w_up = rng.standard_normal((k_prev, k_mid)).astype(np.float32)
    w_down = rng.standard_normal((k_mid, N)).astype(np.float32)
    s = _rand_scales(rng, k_mid)
    up2 = np.asarray(fold_into_linear_outputs(jnp.asarray(w_up), s), np.float64)
    down2 = np.asarray(scale_weights(jnp.asarray(w_down), s), np.float64)
    f64 = lambda a: a.astype(np.float64)  # noqa: E731
    # plain chain: linear -> linear
    ref = x @ f64(w_up) @ f64(w_down)
    np.testing.assert_allclose(x @ up2 @ down2, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    # SwiGLU: (silu(x Wg) * (x Wu)) Wd; the per-channel product commutes with 1 / s
    silu = lambda a: a / (1 + np.exp(-a))  # noqa: E731
    ref = (silu(x @ f64(w_gate)) * (x @ f64(w_up))) @ f64(w_down)
    got = (silu(x @ f64(w_gate)) * (x @ up2)) @ down2
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_awq_scales_fold_exactly(salient):
    """The searched scales, folded into a norm, leave the float network unchanged."""
    x, w = salient
    res = awq_search(jnp.asarray(x), [jnp.asarray(w)], _spec(), grid=5)
    g = np.ones(K, np.float32)
    g2 = np.asarray(fold_into_norm(jnp.asarray(g), res.scales), np.float64)
    w2 = np.asarray(scale_weights(jnp.asarray(w), res.scales), np.float64)
    x64 = x.astype(np.float64)
    ref = _rmsnorm64(x64, 1.0) @ w.astype(np.float64)
    np.testing.assert_allclose(_rmsnorm64(x64, g2) @ w2, ref, rtol=1e-5,
                               atol=1e-5 * np.abs(ref).max())


# ----------------------------------------------------------------------------------- errors


def test_bad_inputs():
    spec = _spec()
    x = jnp.ones((8, K))
    w = jnp.ones((K, N))
    with pytest.raises(JaxquantError, match=r"weights\[0\].*K=256"):
        awq_search(x, [jnp.ones((K + 1, N))], spec)
    with pytest.raises(JaxquantError, match=r"weights\[0\].*\.T"):
        awq_search(x, [jnp.ones((N, K))], spec)
    with pytest.raises(JaxquantError, match="x has shape"):
        awq_search(jnp.ones((2, 8, K)), [w], spec)
    with pytest.raises(JaxquantError, match="list"):
        awq_search(x, w, spec)
    with pytest.raises(JaxquantError, match="empty"):
        awq_search(x, [], spec)
    with pytest.raises(JaxquantError, match="grid"):
        awq_search(x, [w], spec, grid=0)
    with pytest.raises(JaxquantError, match="screen=0"):
        awq_search(x, [w], spec, screen=0)
    with pytest.raises(JaxquantError, match="refine=1"):
        awq_search(x, [w], spec, refine=1)
    with pytest.raises(JaxquantError, match="2 specs for 1 weights"):
        awq_search(x, [w], [spec, spec])
    with pytest.raises(FormatError, match="ArraySpec"):
        awq_search(x, [w], WeightScheme("int4", group_size=128))
    with pytest.raises(FormatError, match="axis 0"):
        awq_search(x, [w], WeightScheme("int4", group_size=128).resolve((K, N), 1, "w"))
    with pytest.raises(FormatError, match="another shape"):
        awq_search(x, [w], WeightScheme("int4", granularity="tensor").resolve((K, 64), 0, "w"))
    with pytest.raises(JaxquantError, match="gram"):
        awq_search_from_stats(jnp.ones(K), jnp.ones((K, K - 1)), [w], spec)
    with pytest.raises(JaxquantError, match="max_shrink"):
        awq_clip_search(x, w, spec, max_shrink=1.0)
    with pytest.raises(JaxquantError, match="ratios"):
        apply_clip(w, jnp.ones((1, N)), spec)
    with pytest.raises(JaxquantError, match=r"s has shape"):
        scale_weights(w, jnp.ones(K - 1))
    with pytest.raises(JaxquantError, match=r"s has shape"):
        fold_into_norm(jnp.ones(K), jnp.ones(N))
    with pytest.raises(JaxquantError, match=r"s has shape"):
        fold_into_linear_outputs(jnp.ones((K, N)), jnp.ones(K))
