"""QLoRA on a small Llama: the NF4 base stays frozen and quantized in the training state while
the adapters train; merging folds the adapters into a re-quantized model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxquant as jq
from jaxquant.errors import JaxquantError, LeafError
from jaxquant.models.llama import Llama, LlamaConfig
from jaxquant.qat.lora import (LoraConfig, check_base, init_adapters, lora_apply,
                               lora_config_from_recipe, merge_adapters,
                               merged_weights)
from jaxquant.qat.train import lm_loss, make_step, token_batches, train, tree_bytes

CFG = LlamaConfig(vocab_size=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                  ffn_dim=128)


@pytest.fixture(scope="module")
def setup():
    model = Llama(CFG)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (8, 32)), jnp.int32)
    params = model.init(jax.random.key(0), tokens[:1])
    return model, params, jq.quantize(params, "nf4"), tokens


def test_base_stays_frozen_and_quantized_while_adapters_train(setup):
    model, _, base, tokens = setup
    cfg = LoraConfig(rank=4, alpha=8)
    adapters = init_adapters(jax.random.key(1), base, cfg)
    assert len(adapters) == CFG.n_layers * 7
    assert all(a["a"].dtype == jnp.bfloat16 and not a["b"].any() for a in adapters.values())
    with jq.intercept():
        ref = model.apply(base, tokens)[0]
    np.testing.assert_array_equal(np.asarray(lora_apply(model, base, adapters, cfg, tokens)[0]),
                                  np.asarray(ref))  # B = 0: starts at the quantized model
    snapshot = jax.tree_util.tree_map(np.asarray, base)
    opt = optax.adam(1e-2)
    step = make_step(lambda a, tok, b: lm_loss(lora_apply(model, b, a, cfg, tok)[0], tok), opt,
                     base)
    trained, state, losses = train(step, adapters, opt.init(adapters),
                                   token_batches(np.asarray(tokens).reshape(-1), 32, 4), 15,
                                   progress=False)
    assert losses[-1] < losses[0]
    for a, b in zip(jax.tree_util.tree_leaves(base), jax.tree_util.tree_leaves(snapshot)):
        np.testing.assert_array_equal(np.asarray(a), b)  # the base did not move
    kernel = base["params"]["layers_0"]["mlp"]["up_proj"]["kernel"]
    assert isinstance(kernel, jq.QArray) and kernel.format == "nf4"
    assert kernel.qvalue.dtype == jnp.uint8 and isinstance(kernel.scale, jq.QArray)  # double quant
    assert all(not np.array_equal(trained[k]["b"], adapters[k]["b"]) for k in trained)
    # what the training state holds: the packed NF4 base plus bf16 adapters and their Adam state
    float_bytes = tree_bytes(setup[1])
    assert tree_bytes(base) < 0.45 * float_bytes
    assert tree_bytes(trained) == sum(2 * (a.size + b.size) for a, b in
                                      ((v["a"], v["b"]) for v in trained.values()))
    assert tree_bytes(state) >= 2 * tree_bytes(trained)


def test_merge_folds_adapters_into_a_requantized_model(setup):
    model, _, base, tokens = setup
    cfg = LoraConfig(rank=4, alpha=8)
    adapters = init_adapters(jax.random.key(2), base, cfg)
    adapters = jax.tree_util.tree_map(lambda x: x + 0.05 * jnp.ones_like(x), adapters)
    lora_out = lora_apply(model, base, adapters, cfg, tokens)[0]
    with jq.intercept():
        base_out = model.apply(base, tokens)[0]
    merged_out = model.apply(merged_weights(base, adapters, cfg), tokens)[0]
    # the adapters run in bf16, the merged weights in f32: equal up to bf16 rounding
    err = float(jnp.linalg.norm(merged_out - lora_out) / jnp.linalg.norm(lora_out - base_out))
    assert err < 0.02
    requantized = merge_adapters(base, adapters, cfg, "nf4")
    kernel = requantized["params"]["layers_0"]["mlp"]["up_proj"]["kernel"]
    assert isinstance(kernel, jq.QArray) and kernel.format == "nf4"
    np.testing.assert_allclose(
        np.asarray(kernel.dequantize()),
        np.asarray(merged_weights(base, adapters, cfg)["params"]["layers_0"]["mlp"]["up_proj"]
                   ["kernel"]), atol=0.2 * float(jnp.max(jnp.abs(kernel.dequantize()))))


def test_bad_input_is_a_clear_error(setup):
    _, params, base, _ = setup
    with pytest.raises(LeafError, match="no quantized weights; quantize it first"):
        check_base(params)
    with pytest.raises(JaxquantError, match="no quantized 2-D Dense kernel matches"):
        init_adapters(jax.random.key(0), base, LoraConfig(targets=("nothing_like_this",)))
    with pytest.raises(JaxquantError, match="rank=0 must be >= 1"):
        LoraConfig(rank=0)
    with pytest.raises(JaxquantError, match="alpha=-1.0 must be positive"):
        LoraConfig(alpha=-1.0)
    recipe = jq.Recipe((jq.Rule(("re:kernel$",), jq.get_preset("nf4").rules[0].weight,
                                method_args={"lora_rank": 8, "lora_targets": "mlp"}),))
    cfg = lora_config_from_recipe(recipe)
    assert (cfg.rank, cfg.alpha, cfg.targets) == (8, 32.0, ("mlp",))
    assert set(init_adapters(jax.random.key(0), base, cfg)) == {
        f"layers_{i}/mlp/{n}_proj" for i in range(2) for n in ("gate", "up", "down")}
