"""QAT on small Flax models: a step lowers the loss, conversion gives QArrays whose forward is
the fake-quant forward, and bad input (quantized or non-finite parameters, static activation
scales, calibrated methods) is a clear error."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxquant as jq
from jaxquant.errors import FormatError, LeafError, RecipeError
from jaxquant.models.llama import Llama, LlamaConfig
from jaxquant.qat import QATWeight, convert, materialize, prepare_qat, qat_apply, qat_forward
from jaxquant.qat.optim import qat_optimizer
from jaxquant.qat.train import lm_loss, make_step

CFG = LlamaConfig(vocab_size=64, d_model=64, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=16,
                  ffn_dim=96)
INT3_G32 = jq.Recipe((jq.Rule(("re:kernel$",), jq.WeightScheme("int3", group_size=32)),))


@pytest.fixture(scope="module")
def tiny():
    model = Llama(CFG)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (4, 32)), jnp.int32)
    return model, model.init(jax.random.key(0), tokens[:1]), tokens


def _loss(model):
    return lambda t, tok: lm_loss(qat_apply(model, t, tok)[0], tok)


@pytest.mark.parametrize("learn_scales", [False, True])
def test_a_qat_step_lowers_the_loss(tiny, learn_scales):
    model, params, tokens = tiny
    apply_fn, qat = qat_forward(model, params, INT3_G32, learn_scales=learn_scales)
    rtn = jq.quantize(params, INT3_G32)
    with jq.intercept():
        rtn_loss = float(lm_loss(model.apply(rtn, tokens)[0], tokens))
    assert float(lm_loss(apply_fn(qat, tokens)[0], tokens)) == pytest.approx(rtn_loss, rel=1e-6)
    opt = qat_optimizer(3e-3, 1e-2)
    step = make_step(_loss(model), opt)
    state = opt.init(qat)
    before = float(_loss(model)(qat, tokens))
    qat2, state, loss = step(qat, state, tokens)
    assert float(loss) == pytest.approx(before, rel=1e-6)
    assert float(_loss(model)(qat2, tokens)) < before
    k0 = qat["params"]["layers_0"]["mlp"]["up_proj"]["kernel"]
    k1 = qat2["params"]["layers_0"]["mlp"]["up_proj"]["kernel"]
    assert not np.array_equal(k0.weight, k1.weight)
    assert learn_scales == (k1.log_scale is not None and not np.array_equal(k0.log_scale,
                                                                            k1.log_scale))


@pytest.mark.parametrize("recipe,learn", [("w4a16", True), ("w4a16-asym", True), ("nf4", False),
                                          ("mxfp4", False), ("nvfp4", False), ("w8a16", False)])
def test_conversion_equals_the_fake_quant_forward(tiny, recipe, learn):
    model, params, tokens = tiny
    qat = prepare_qat(params, recipe, learn_scales=learn)
    # stand-in for training: move every weight and log-scale off its initial value
    key = iter(jax.random.split(jax.random.key(5), 1000))
    noise = lambda x: x + 0.02 * jax.random.normal(next(key), x.shape)  # noqa: E731

    def move(leaf):
        if not isinstance(leaf, QATWeight):
            return noise(leaf)
        log_s = None if leaf.log_scale is None else noise(leaf.log_scale)
        return dataclasses.replace(leaf, weight=noise(leaf.weight), log_scale=log_s)

    qat = jax.tree_util.tree_map(move, qat, is_leaf=lambda x: isinstance(x, QATWeight))
    qparams = convert(qat)
    fake = jax.jit(materialize)(qat)
    real = jax.jit(jq.dequantize)(qparams)
    for a, b in zip(jax.tree_util.tree_leaves(fake), jax.tree_util.tree_leaves(real)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bit for bit
    with jq.intercept():
        out = jax.jit(lambda p, t: model.apply(p, t)[0])(qparams, tokens)
    ref = jax.jit(lambda q, t: qat_apply(model, q, t)[0])(qat, tokens)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))


@pytest.mark.parametrize("recipe", ["w8a8-int8", "fp8"])
def test_w8a8_conversion_matches_within_tolerance(tiny, recipe):
    """Activation-quantized layers: the real int8 / fp8 dot and the fake-quant float dot agree to
    f32 rounding per layer (documented tolerance 1e-5 relative)."""
    model, params, tokens = tiny
    qat = prepare_qat(params, recipe)
    leaf = qat["params"]["layers_0"]["mlp"]["down_proj"]["kernel"]
    x = jax.random.normal(jax.random.key(3), (6, CFG.ffn_dim))
    from jaxquant.qat import fake_quant_activation

    ref = fake_quant_activation(x, leaf.activation, (1,)) @ leaf.fake()
    real = jq.quantized_dot_general(x, leaf.to_qarray(), (((1,), (0,)), ((), ())))
    np.testing.assert_allclose(np.asarray(real), np.asarray(ref), rtol=1e-5,
                               atol=1e-5 * float(jnp.max(jnp.abs(ref))))
    assert jax.jit(lambda q, t: qat_apply(model, q, t)[0])(qat, tokens).shape == (4, 32, 64)


def test_nnx_weight_only_qat():
    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.fc1, self.fc2 = nnx.Linear(48, 64, rngs=rngs), nnx.Linear(64, 8, rngs=rngs)

        def __call__(self, x):
            return self.fc2(jax.nn.relu(self.fc1(x)))

    graphdef, state = nnx.split(MLP(nnx.Rngs(0)))
    qat = prepare_qat(state, "w4a16")
    x = jax.random.normal(jax.random.key(1), (5, 48))

    def loss(q):
        return jnp.mean(nnx.merge(graphdef, materialize(q))(x) ** 2)

    grads = jax.grad(loss)(qat)
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree_util.tree_leaves(grads["fc1"]))
    with jq.intercept():
        out = nnx.merge(graphdef, convert(qat))(x)
    ref = nnx.merge(graphdef, materialize(qat))(x)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-6, atol=1e-6)


def test_bad_input_is_a_clear_error(tiny):
    model, params, _ = tiny
    with pytest.raises(LeafError, match="already quantized .*QAT trains float weights"):
        prepare_qat(jq.quantize(params, "w4a16"), "w4a16")
    with pytest.raises(FormatError, match="nf4 has no differentiable scale path"):
        prepare_qat(params, "nf4", learn_scales=True)
    with pytest.raises(FormatError, match="mxfp4 has no differentiable scale path"):
        prepare_qat(params, "mxfp4", learn_scales=True)
    static = jq.Recipe((jq.Rule(("re:kernel$",), jq.WeightScheme("int8"),
                                activation=jq.activation_scheme("int8", "tensor", False)),))
    with pytest.raises(RecipeError, match="static int8 activation scales"):
        prepare_qat(params, static)
    with pytest.raises(RecipeError, match="method 'gptq'"):
        prepare_qat(params, "w4a16-gptq")
    bad = jax.tree_util.tree_map(lambda x: x, params)
    bad["params"]["layers_0"]["mlp"]["up_proj"]["kernel"] = (
        bad["params"]["layers_0"]["mlp"]["up_proj"]["kernel"].at[0, 0].set(jnp.nan))
    with pytest.raises(LeafError, match="NaN or Inf"):
        prepare_qat(bad, "w4a16")
    with pytest.raises(RecipeError, match="targets no parameter"):
        prepare_qat({"w": jnp.ones((4, 4))}, "w4a16")
