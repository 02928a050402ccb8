"""A quantized KV cache inside the Llama decoder, recipes and the command line."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxquant.cli import main
from jaxquant.errors import JaxquantError
from jaxquant.kernels.decode_attention.layouts import KVCacheSpec
from jaxquant.models import kv_cache
from jaxquant.models.generate import generate, module_apply
from jaxquant.models.llama import Llama, LlamaConfig
from jaxquant.recipes.io import load_recipe, save_recipe
from jaxquant.recipes.presets import get_preset
from jaxquant.recipes.recipe import Recipe

CFG = LlamaConfig(vocab_size=96, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32,
                  ffn_dim=128)
TOL = {"bf16": 1e-2, "int8": 3e-2, "fp8": 0.1, "int4": 0.4}


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("kv", ["bf16", "int8", "fp8", "int4", KVCacheSpec("int4", 16)],
                         ids=str)
def test_decoding_token_by_token_stores_what_prefill_stores(kv):
    model = Llama(CFG)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 96, (2, 9)), jnp.int32)
    params = model.init(jax.random.key(2), tokens)
    full_float, _ = model.apply(params, tokens)
    step = jax.jit(lambda p, t, c: model.apply(p, t, cache=c))
    prefill, all_at_once = step(params, tokens, model.init_cache(2, 16, kv=kv))
    logits, cache = step(params, tokens[:, :4], model.init_cache(2, 16, kv=kv))
    parts = [logits]
    for i in range(4, 9):  # one token at a time: the decode_attention path
        logits, cache = step(params, tokens[:, i:i + 1], cache)
        parts.append(logits)
    stepped = jnp.concatenate(parts, axis=1)
    # per-token scales: the same codes either way, up to a code flipped where the f32 K/V of
    # a [B, 4] and a [B, 1] matmul round across a tie
    assert int(cache.length) == int(all_at_once.length) == 9
    for layer in range(CFG.n_layers):
        for a, b in zip(kv_cache.read(cache, layer, jnp.float32),
                        kv_cache.read(all_at_once, layer, jnp.float32)):
            a, b = np.asarray(a)[:, :9], np.asarray(b)[:, :9]
            assert np.mean(np.isclose(a, b, rtol=1e-5, atol=1e-6)) > 0.99
            assert rel(a, b) < 2e-2
    assert rel(stepped, prefill) < 1e-2
    fmt = kv.format if isinstance(kv, KVCacheSpec) else kv
    assert rel(stepped, full_float) < TOL[fmt]


def test_cache_errors_name_the_fix():
    model = Llama(CFG)
    params = model.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32))
    with pytest.raises(JaxquantError, match="KV cache holds 4 positions"):
        model.apply(params, jnp.zeros((1, 5), jnp.int32), cache=model.init_cache(1, 4, kv="int8"))
    with pytest.raises(JaxquantError, match="either dtype .* or kv"):
        kv_cache.init_cache(CFG, 1, 4, jnp.bfloat16, kv="int8")
    with pytest.raises(JaxquantError, match="group_size=24 does not divide head_dim=32"):
        kv_cache.init_cache(CFG, 1, 4, kv=KVCacheSpec("int8", 24))
    cache = kv_cache.init_cache(CFG, 1, 8, kv="int4")
    assert cache.nbytes == 8 * kv_cache.bytes_per_token(CFG, "int4") == 8 * 2 * 2 * 2 * (16 + 4)


def test_generate_with_quantized_cache_runs_and_stays_close():
    model = Llama(CFG)
    params = model.init(jax.random.key(5), jnp.zeros((1, 2), jnp.int32))
    prompt = [3, 14, 15, 92, 65]
    ids = {kv: generate(module_apply(model), params,
                        lambda b, n, kv=kv: model.init_cache(b, n, kv=kv), prompt,
                        max_new_tokens=6) for kv in (None, "int8")}
    assert len(ids["int8"]) == 6 and ids["int8"][0] == ids[None][0]


def test_recipe_kv_cache_round_trips_and_stays_out_of_weights(tmp_path):
    r = Recipe(get_preset("w4a16").rules, kv_cache=KVCacheSpec("int4", 32), name="w4-kv4")
    save_recipe(r, tmp_path / "r.yaml")
    assert "kv_cache:" in (tmp_path / "r.yaml").read_text()
    assert load_recipe(tmp_path / "r.yaml") == r
    (tmp_path / "bad.yaml").write_text("rules: [{targets: [kernel], scheme: w8a16}]\n"
                                       "kv_cache: {format: int8, bits: 8}\n")
    with pytest.raises(JaxquantError, match="recipe.kv_cache: unknown key"):
        load_recipe(tmp_path / "bad.yaml")


def test_smollm2_greedy_tokens_quantized_vs_float_cache(smollm2):
    """An int8 cache gives the float cache's greedy tokens on a short prompt; int4 is reported
    (first divergence printed) and keeps the first token. (bf16 and fp8 caches' tokens are in
    the KV-cache table, jaxquant.evaluation.kv_cache_table; bf16 storage is checked value by
    value in test_decoding_token_by_token_stores_what_prefill_stores.)"""
    from jaxquant.cli import pipeline

    ids = smollm2.tokenizer.encode("The capital of France is")
    out = {kv: generate(pipeline.step_fn(smollm2), smollm2.params,
                        lambda b, n, kv=kv: smollm2.module.init_cache(b, n, kv=kv), ids,
                        max_new_tokens=8) for kv in (None, "int8", "int4")}
    for kv, toks in out.items():
        diff = [i for i, (a, b) in enumerate(zip(toks, out[None])) if a != b]
        print(f"{kv}: {smollm2.tokenizer.decode(toks)!r}, first divergence "
              f"{diff[0] if diff else None}")
    assert out["int8"] == out[None]
    assert out["int4"][0] == out[None][0]


def test_cli_eval_and_generate_report_kv_cache(capsys):
    import json

    small = ["--max-tokens", "256", "--seq-len", "128", "--batch-size", "2", "--json"]
    assert main(["eval", "--kv-cache", "int8", *small]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["kv_cache"] == {"format": "int8", "group_size": None, "bytes_per_token": 12240,
                              "float_bytes_per_token": 46080}
    assert abs(ev["perplexity_delta_percent"]) < 2.0  # int8 cache, float weights
    # int8 again: the same compiled decode step as the greedy-token test's int8 cache
    assert main(["generate", "--prompt", "The capital of France is", "--max-new-tokens", "3",
                 "--kv-cache", "int8", "--json"]) == 0
    gen = json.loads(capsys.readouterr().out)
    assert gen["kv_cache"]["format"] == "int8" and "Paris" in gen["completion"]
    with pytest.raises(SystemExit):
        main(["eval", "--kv-cache", "int5"])
