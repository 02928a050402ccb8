"""activation_split: the float model with only the decoder blocks' Dense inputs quantized."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np

import jaxquant as jq
from jaxquant.evaluation.activation_split import activations_only_fn, block_layers
from jaxquant.models.llama import Llama, LlamaConfig


def test_activations_only_quantizes_block_inputs_and_keeps_weights():
    cfg = LlamaConfig(64, 32, 2, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=48)
    module = Llama(cfg)
    params = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    layers = block_layers(params)
    assert len(layers) == 2 * 7 and "layers_1/mlp/down_proj" in layers
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 16)), jnp.int32)
    model = types.SimpleNamespace(module=module)
    ref = np.asarray(module.apply(params, tokens)[0], np.float64)
    for preset, tol in (("fp8", 0.1), ("w8a8-int8", 0.05)):
        spec = jq.get_preset(preset).rules[0].activation
        out = np.asarray(jax.jit(activations_only_fn(model, spec, layers))(params, tokens))
        rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
        assert 0 < rel < tol, (preset, rel)
    # no layers named: exactly the float model
    out = np.asarray(jax.jit(activations_only_fn(model, spec, []))(params, tokens), np.float64)
    plain = jax.jit(lambda p, t: module.apply(p, t)[0])(params, tokens)
    np.testing.assert_array_equal(out, np.asarray(plain, np.float64))
