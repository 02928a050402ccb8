"""The "nk" GPU layout of 4-bit weights (jaxquant.inference.gpu_layout): which leaves take it,
that the quantized model computes the same function, the exact round trip, and the report."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxquant as jq
from jaxquant.inference.gpu_layout import nk_reason, to_canonical, to_gpu_layout
from jaxquant.models.llama import Llama, LlamaConfig

CFG = LlamaConfig(vocab_size=256, d_model=256, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=64,
                  ffn_dim=384, max_seq_len=64, dtype=jnp.bfloat16)


@pytest.fixture(scope="module")
def model_params():
    model = Llama(CFG)
    params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    return model, params


@pytest.mark.parametrize("preset", ["w4a16", "w4a16-asym"])
def test_gpu_layout_keeps_the_function(model_params, preset):
    model, params = model_params
    q = jq.quantize(params, preset)
    g = to_gpu_layout(q)
    leaves = [x for x in jax.tree_util.tree_leaves(g, is_leaf=jq.is_qarray) if jq.is_qarray(x)]
    assert leaves and all(x.meta.layout == "nk" for x in leaves if x.ndim == 2 and x.format != "int8")
    for a, b in zip(jax.tree_util.tree_leaves(q, is_leaf=jq.is_qarray),
                    jax.tree_util.tree_leaves(g, is_leaf=jq.is_qarray)):
        if jq.is_qarray(a):
            np.testing.assert_array_equal(np.asarray(a.dequantize(jnp.float32)),
                                          np.asarray(b.dequantize(jnp.float32)))
            np.testing.assert_array_equal(np.asarray(a.codes()), np.asarray(b.codes()))
            assert b.nbytes <= a.nbytes + a.scale.size * 2  # bf16 zero points (asym)
    tok = jnp.arange(8, dtype=jnp.int32)[None] % CFG.vocab_size
    with jq.intercept():
        ref = jax.jit(lambda p: model.apply(p, tok)[0])(q)
        out = jax.jit(lambda p: model.apply(p, tok)[0])(g)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32),
                               rtol=2e-2, atol=2e-2)
    back = to_canonical(g)
    for a, b in zip(jax.tree_util.tree_leaves(q, is_leaf=jq.is_qarray),
                    jax.tree_util.tree_leaves(back, is_leaf=jq.is_qarray)):
        if jq.is_qarray(a):
            assert b.meta == a.meta
            np.testing.assert_array_equal(np.asarray(a.qvalue), np.asarray(b.qvalue))
            if a.zero_point is not None:
                np.testing.assert_array_equal(np.asarray(a.zero_point), np.asarray(b.zero_point))


def test_ineligible_leaves_stay(model_params):
    _, params = model_params
    q = jq.quantize(params, "w8a16")
    assert "not a 4-bit" in nk_reason(q["params"]["layers_0"]["mlp"]["down_proj"]["kernel"])
    g = to_gpu_layout(q)
    assert all(x.meta.layout == "canonical" for x in jax.tree_util.tree_leaves(g, is_leaf=jq.is_qarray)
               if jq.is_qarray(x))
    w = jq.quantize({"k": jnp.ones((192, 64))}, jq.Recipe((jq.Rule(("re:k",), jq.WeightScheme(
        "int4", "group", 64)),)))["k"]
    assert "multiple of 128" in nk_reason(w)


def test_saving_a_gpu_layout_tree_writes_the_canonical_one(model_params, tmp_path):
    from jaxquant.checkpoint import orbax_io

    _, params = model_params
    q = jq.quantize(params, "w4a16-asym")
    orbax_io.save(tmp_path / "ckpt", to_gpu_layout(q))
    back = orbax_io.restore(tmp_path / "ckpt")
    for a, b in zip(jax.tree_util.tree_leaves(q, is_leaf=jq.is_qarray),
                    jax.tree_util.tree_leaves(back, is_leaf=jq.is_qarray)):
        if jq.is_qarray(a):
            assert b.meta.layout == "canonical"
            np.testing.assert_array_equal(np.asarray(a.qvalue), np.asarray(b.qvalue))
