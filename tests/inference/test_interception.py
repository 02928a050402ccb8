"""Quantized forward through Linen and NNX models: every intercepted layer type, under jit,
against dequantize-then-float-forward; W8A8 paths compile to real int8/fp8 dots."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxquant as jq
from jaxquant.inference import dispatch

# Tolerance of quantized-forward vs dequantize-then-forward (relative Frobenius error).
# Weight-only: both compute the same dequantized weights; only f32 summation order differs.
# W8A8: the difference is the activation rounding of the format.
WEIGHT_ONLY_TOL = 1e-5
ACT_TOL = {"int8": 0.03, "fp8_e4m3": 0.08}


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, ids):
        embed = nn.Embed(64, 128, name="embed")
        x = embed(ids)
        x = nn.Dense(256, name="up")(x)
        x = nn.DenseGeneral((4, 32), name="dg")(jax.nn.gelu(x))
        x = nn.Einsum((4, 32, 128), "btnh,nhd->btd", name="ein")(x)
        return embed.attend(x)


class NNXNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Embed(64, 128, rngs=rngs)
        self.up = nnx.Linear(128, 256, rngs=rngs)
        self.dg = nnx.LinearGeneral(256, (4, 32), rngs=rngs)
        self.ein = nnx.Einsum("btnh,nhd->btd", (4, 32, 128), (128,), rngs=rngs)

    def __call__(self, ids):
        x = self.embed(ids)
        x = self.dg(jax.nn.gelu(self.up(x)))
        return self.embed.attend(self.ein(x))


def recipe_for(preset: str) -> jq.Recipe:
    """The preset's scheme on every kernel and the embedding; the einsum kernel (contracting
    axes 0 and 1) gets its contraction axis and output channel axis spelled out."""
    base = jq.get_preset(preset).rules[0]
    w, act = base.weight, base.activation
    if w.resolved_granularity == "channel":
        ein = dataclasses.replace(w, axis=1, channel_axes=(2,))
    else:
        ein = dataclasses.replace(w, axis=1, group_size=min(w.group_size or 32, 32)) if not \
            jq.get_format(w.format).fixed_group else dataclasses.replace(w, axis=1)
    return jq.Recipe(
        (
            jq.Rule(("re:ein/kernel",), ein, activation=act),
            jq.Rule(("re:(kernel|embedding)$",), w, activation=act),
        ),
        ignore=(),
    )


IDS = jnp.arange(12, dtype=jnp.int32).reshape(2, 6) * 5 % 64


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def _tol(preset: str) -> float:
    act = jq.get_preset(preset).rules[0].activation
    return WEIGHT_ONLY_TOL if act is None else ACT_TOL[act.format]


@pytest.fixture(scope="module")
def linen_model():
    m = LinenNet()
    return m, m.init(jax.random.key(0), IDS)


@pytest.fixture(scope="module")
def nnx_model():
    return nnx.split(NNXNet(nnx.Rngs(0)))


@pytest.mark.parametrize("preset", jq.preset_names(calibrated=False))
def test_linen_quantized_forward_matches_dequantized(linen_model, preset):
    model, params = linen_model
    q = jq.quantize(params, recipe_for(preset))
    ref = model.apply(jq.dequantize(q), IDS)
    with jq.intercept(report=True) as rep:
        out = jax.jit(model.apply)(q, IDS)
    assert out.shape == ref.shape
    assert _rel(out, ref) < _tol(preset)
    layers = {row[0] for row in rep.rows}
    assert {"up", "dg", "ein", "embed/attend"} <= layers
    expected = "xla-dequant" if jq.get_preset(preset).rules[0].activation is None else "w8a8"
    assert all(row[2].startswith(expected) for row in rep.rows)


@pytest.mark.parametrize("preset", jq.preset_names(calibrated=False))
def test_nnx_quantized_forward_matches_dequantized(nnx_model, preset):
    graphdef, state = nnx_model
    q = jq.quantize(state, recipe_for(preset))
    ref = nnx.merge(graphdef, jq.dequantize(q))(IDS)

    @jax.jit
    def run(qstate, ids):
        with jq.intercept():
            return nnx.merge(graphdef, qstate)(ids)

    out = run(q, IDS)
    assert _rel(out, ref) < _tol(preset)


def test_embedding_lookup_gathers_quantized_rows(linen_model):
    _, params = linen_model
    q = jq.quantize(params, recipe_for("w4a16"))
    table = q["params"]["embed"]["embedding"]
    ids = jnp.array([[0, 63, 7]])
    expected = jnp.take(table.dequantize(), ids, axis=0)
    from jaxquant.inference.embedding import take_rows

    np.testing.assert_allclose(take_rows(table, ids, jnp.float32), expected, rtol=1e-6, atol=1e-7)


def test_float_layers_untouched_by_interception(linen_model):
    model, params = linen_model
    with jq.intercept():
        out = jax.jit(model.apply)(params, IDS)
    np.testing.assert_allclose(out, model.apply(params, IDS), rtol=1e-6)


def _hlo(model, q):
    with jq.intercept():
        return jax.jit(model.apply).lower(q, IDS).compile().as_text()


def test_w8a8_int8_runs_integer_dot(linen_model):
    model, params = linen_model
    q = jq.quantize(params, recipe_for("w8a8-int8"))
    with jq.intercept():
        text = jax.jit(model.apply).lower(q, IDS).as_text()
    int_dots = [l for l in text.splitlines()
                if "dot_general" in l and "xi8>" in l and "-> tensor<" in l and "xi32>" in l]
    assert len(int_dots) >= 4, "expected one int8 x int8 -> int32 dot per quantized layer"
    compiled = _hlo(model, q)
    assert any(" dot(" in l and "= s32[" in l for l in compiled.splitlines())


def test_fp8_runs_fp8_dot(linen_model):
    model, params = linen_model
    q = jq.quantize(params, recipe_for("fp8"))
    hlo = _hlo(model, q)
    with jq.intercept():
        text = jax.jit(model.apply).lower(q, IDS).as_text()
    # The dot consumes f8E4M3FN operands in the program we hand to XLA; on CPU XLA may upcast
    # them internally, on GPU it calls cuBLASLt's fp8 gemm.
    assert any("dot_general" in l and "f8E4M3FN" in l for l in text.splitlines())
    assert "f8e4m3fn" in hlo.lower()


def test_weight_only_never_materializes_float_weights_outside_jit(linen_model):
    model, params = linen_model
    q = jq.quantize(params, recipe_for("w4a16"))
    with jq.intercept():
        text = jax.jit(model.apply).lower(q, IDS).as_text()
    # inputs to the jitted computation are the packed uint8 codes, not float kernels
    assert "tensor<64x256xui8>" in text  # up/kernel 128x256 packed along the contraction axis


def test_force_xla_path_and_report(linen_model):
    model, params = linen_model
    q = jq.quantize(params, recipe_for("w8a8-int8"))
    with jq.intercept(allow_low_precision=False, report=True) as rep:
        out = jax.jit(model.apply)(q, IDS)
    assert all(r[2] == "xla-dequant" for r in rep.rows)
    assert _rel(out, model.apply(jq.dequantize(q), IDS)) < WEIGHT_ONLY_TOL


def test_bad_backend_name():
    with pytest.raises(ValueError, match="backend"):
        with dispatch.settings(backend="cuda"):
            pass


def test_static_activation_calibration(linen_model):
    from jaxquant.calibration.activations import calibrate_activations

    model, params = linen_model
    act = jq.activation_scheme("int8", "tensor", dynamic=False,
                               clipping=jq.Clipping("percentile", percentile=99.99))
    recipe = jq.Recipe(
        (jq.Rule(("re:(up|dg)/kernel$",), jq.WeightScheme("int8"), activation=act),), ignore=()
    )
    q = jq.quantize(params, recipe)
    batches = [IDS, (IDS * 3) % 64]
    qc = calibrate_activations(lambda p, b: model.apply(p, b), q, batches)
    for name in ("up", "dg"):
        s = qc["params"][name]["kernel"].input_scale
        assert s is not None and float(s) > 0
    with jq.intercept():
        out = jax.jit(model.apply)(qc, IDS)
    assert _rel(out, model.apply(jq.dequantize(q), IDS)) < 0.05


class _Dense(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(128, use_bias=False, name="proj")(x)


@pytest.mark.parametrize("preset", ["w4a16", "w4a16-asym"])
def test_forced_pallas_w4a16_matches_xla_path(preset):
    """The W4A16 Pallas kernel (interpret mode on CPU) through the model's own forward."""
    model = _Dense()
    x = jax.random.normal(jax.random.key(1), (5, 256))
    q = jq.quantize(model.init(jax.random.key(0), x), preset)
    with jq.intercept(backend="xla"):
        ref = jax.jit(model.apply)(q, x)
    with jq.intercept(backend="pallas", report=True) as rep:
        out = jax.jit(model.apply)(q, x)
    assert rep.rows == [("proj", q["params"]["proj"]["kernel"].format, "pallas-w4a16")]
    assert _rel(out, ref) < 1e-2  # the kernel runs activations in bf16


def test_forced_pallas_on_unsupported_layer_is_a_clear_error():
    model = _Dense()
    x = jnp.ones((2, 200))  # K=200: ragged last group of the w4a16 preset
    q = jq.quantize(model.init(jax.random.key(0), x), "w4a16")
    with pytest.raises(jq.FormatError, match="not a multiple of the group size"):
        with jq.intercept(backend="pallas"):
            jax.jit(model.apply)(q, x)


def test_auto_dispatch_keeps_f32_activations_off_the_bf16_kernel():
    """auto dispatch sends only bf16 activations to the W4A16 kernel; forcing it rounds f32."""
    from jaxquant.inference.kernels_bridge import w4a16_reason

    w = jq.quantize({"kernel": jnp.ones((256, 64))}, "w4a16")["kernel"]
    dims = (((1,), (0,)), ((), ()))
    assert "bf16" in w4a16_reason(jnp.ones((2, 256), jnp.float32), w, dims)
    assert w4a16_reason(jnp.ones((2, 256), jnp.bfloat16), w, dims) is None
    assert w4a16_reason(jnp.ones((2, 256), jnp.float32), w, dims, forced=True) is None
