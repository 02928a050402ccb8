"""Block-sequential calibrated quantization on a small random Llama: every method runs, beats or
matches RTN where it should, folds exactly, and reports bad calibration input clearly."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxquant as jq
from jaxquant.errors import JaxquantError
from jaxquant.methods.adapters import LlamaAdapter
from jaxquant.methods.sequential import quantize_calibrated
from jaxquant.models.llama import Llama, LlamaConfig

CFG = LlamaConfig(vocab_size=256, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2,
                  head_dim=32, ffn_dim=256, tie_embeddings=False)


@pytest.fixture(scope="module")
def model_and_data():
    model = Llama(CFG)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (24, 64)), jnp.int32)
    params = model.init(jax.random.key(0), tokens[:1])
    # give one hidden channel a large scale, as trained LLMs have (activation outliers)
    emb = params["params"]["embed"]["embedding"]
    params["params"]["embed"]["embedding"] = emb.at[:, 7].multiply(25.0)
    return model, params, tokens


def _logits(model, params, tokens):
    with jq.intercept():
        return jax.jit(lambda p, t: model.apply(p, t)[0])(params, tokens)


def _err(model, params, qparams, tokens):
    ref = model.apply(params, tokens)[0]
    out = _logits(model, qparams, tokens)
    return float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))


def _int3(method):
    w = jq.WeightScheme("int3", group_size=64)
    return jq.Recipe((jq.Rule(("re:kernel$",), w, method=method),), ignore=())


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_weight_only_methods_beat_rtn(model_and_data, method):
    model, params, tokens = model_and_data
    calib, held_out = tokens[:16], tokens[16:]
    rtn = jq.quantize(params, _int3("rtn"))
    q, report = quantize_calibrated(model, params, _int3(method), np.asarray(calib),
                                    progress=False)
    assert report.tokens == calib.size and len(report.block_seconds) == CFG.n_layers
    assert isinstance(q["params"]["lm_head"]["kernel"], jq.QArray)  # outside blocks: RTN
    assert _err(model, params, q, held_out) < _err(model, params, rtn, held_out)


def test_smoothquant_w8a8_runs_int8_and_stays_close(model_and_data):
    model, params, tokens = model_and_data
    plain = jq.quantize(params, "w8a8-int8")
    q, report = quantize_calibrated(model, params, "w8a8-smoothquant", np.asarray(tokens[:16]),
                                    progress=False)
    folded = {v["folded_into"] for v in report.layers.values() if "folded_into" in v}
    assert {"input_norm", "post_attn_norm", "mlp/up_proj", "input_smooth"} <= folded
    # o_proj cannot fold into v_proj under GQA: it carries an explicit input_smooth
    assert q["params"]["layers_0"]["attn"]["o_proj"]["kernel"].input_smooth is not None
    held_out = tokens[16:]
    assert _err(model, params, q, held_out) <= _err(model, params, plain, held_out) * 1.05
    assert _err(model, params, q, held_out) < 0.05


def test_smoothquant_auto_alpha_searches_per_group(model_and_data):
    """alpha "auto": one alpha per group of layers sharing an input, from the grid; no worse on
    held-out text than the fixed default."""
    model, params, tokens = model_and_data
    rule = jq.get_preset("w8a8-smoothquant").rules[0]
    auto = jq.Recipe((dataclasses.replace(rule, method_args={"alpha": "auto", "grid": 4}),))
    q, report = quantize_calibrated(model, params, auto, np.asarray(tokens[:16]), progress=False)
    fixed, _ = quantize_calibrated(model, params, "w8a8-smoothquant", np.asarray(tokens[:16]),
                                   progress=False)
    blk = {k.split("/", 2)[2]: v for k, v in report.layers.items() if "layers_0/" in k}
    assert {v["alpha"] for v in blk.values()} <= {0.0, 0.25, 0.5, 0.75, 1.0}
    assert blk["attn/q_proj"]["alpha"] == blk["attn/k_proj"]["alpha"] == blk["attn/v_proj"]["alpha"]
    assert "alpha" in blk["attn/o_proj"] and blk["attn/o_proj"]["folded_into"] == "input_smooth"
    held_out = tokens[16:]
    assert _err(model, params, q, held_out) <= _err(model, params, fixed, held_out) * 1.02
    with pytest.raises(jq.RecipeError, match="auto"):
        dataclasses.replace(rule, method_args={"alpha": "best"})


def test_layers_sharing_an_input_share_statistics(model_and_data):
    from jaxquant.methods.sequential import block_statistics

    model, params, tokens = model_and_data
    adapter = LlamaAdapter(model)
    rule = jq.get_preset("w4a16-gptq").rules[0]
    rules = {f"{a}/{b}": rule for a, bs in (("attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
                                          ("mlp", ("gate_proj", "up_proj", "down_proj")))
             for b in bs}
    hidden = [adapter.embed(params, tokens[j: j + 4]) for j in (0, 4)]
    stats = block_statistics(adapter, 0, adapter.block_params(params, 0), rules, hidden)
    assert stats["attn/q_proj"] is stats["attn/k_proj"] is stats["attn/v_proj"]
    assert stats["mlp/gate_proj"] is stats["mlp/up_proj"]
    assert stats["attn/o_proj"] is not stats["attn/q_proj"]
    # the streamed Hessian equals X^T X of the block's first input (the normed embeddings)
    from jaxquant.models.llama import RMSNorm

    block = adapter.block_params(params, 0)
    x = np.concatenate([np.asarray(RMSNorm(CFG.rms_eps).apply(
        {"params": block["input_norm"]}, h)).reshape(-1, CFG.d_model) for h in hidden])
    np.testing.assert_allclose(np.asarray(stats["attn/q_proj"].hessian), x.T.astype(np.float64) @ x,
                               rtol=1e-4, atol=1e-3)
    assert int(stats["attn/q_proj"].count) == x.shape[0]


@pytest.mark.parametrize("method", ["smoothquant", "awq"])
def test_folding_leaves_float_block_unchanged(model_and_data, method):
    """Scales folded into the norms and preceding linears (MHA config: v -> o folds too) change
    no output of the float block."""
    from jaxquant.methods.sequential import (CalibrationReport, block_statistics,
                                             smooth_block)

    _, _, tokens = model_and_data
    cfg = dataclasses.replace(CFG, n_kv_heads=CFG.n_heads)
    model = Llama(cfg)
    params = model.init(jax.random.key(1), tokens[:1])
    adapter = LlamaAdapter(model)
    act = jq.activation_scheme("int8") if method == "smoothquant" else None
    # AWQ's clip search changes the weights on purpose: folding alone must be exact
    rule = jq.Rule(("re:kernel$",), jq.WeightScheme("int4", group_size=32), activation=act,
                   method=method, method_args={"clip": False} if method == "awq" else {})
    block = adapter.block_params(params, 0)
    rules = {f"{a}/{b}": rule for a, bs in (("attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
                                          ("mlp", ("gate_proj", "up_proj", "down_proj")))
             for b in bs}
    hidden = [adapter.embed(params, tokens[:8])]
    stats = block_statistics(adapter, 0, block, rules, hidden)
    smoothed, explicit, _ = smooth_block(adapter, 0, block, rules, stats, CalibrationReport(0))
    assert explicit == {}
    module = adapter.block_module(0)
    h = hidden[0]
    ref = module.apply({"params": block}, h, *adapter.block_args(h))[0]
    out = module.apply({"params": smoothed}, h, *adapter.block_args(h))[0]
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=2e-4, atol=2e-4)
    changed = np.abs(np.asarray(smoothed["input_norm"]["scale"]) -
                     np.asarray(block["input_norm"]["scale"])).max()
    assert changed > 0  # scales were really folded


def test_too_few_tokens_for_gptq_names_the_need(model_and_data):
    model, params, tokens = model_and_data
    with pytest.raises(JaxquantError, match="at least 128 tokens"):
        quantize_calibrated(model, params, "w4a16-gptq", np.asarray(tokens[:1, :32]),
                            progress=False)


def test_bad_calibration_array(model_and_data):
    model, params, _ = model_and_data
    with pytest.raises(JaxquantError, match="calibration_tokens"):
        quantize_calibrated(model, params, "w4a16-gptq", np.zeros((0, 8), np.int32),
                            progress=False)


def _w8a8_sq(gptq: bool, fmt: str = "int8"):
    rule = jq.get_preset("w8a8-smoothquant").rules[0]
    if fmt != "int8":
        rule = dataclasses.replace(rule, weight=dataclasses.replace(rule.weight, format=fmt))
    args = {"gptq": True, "act_order": True} if gptq else {}
    return jq.Recipe((dataclasses.replace(rule, method_args=args),))


def test_smoothquant_then_gptq_beats_smoothquant_rtn(model_and_data):
    """method_args gptq: SmoothQuant's smoothing, then GPTQ on the smoothed weights with the
    Hessian of the smoothed inputs (H / s s^T): the W8A8 model is closer to the float one than
    SmoothQuant with round-to-nearest weights, every weight still on the int8 grid with int8
    activations."""
    model, params, tokens = model_and_data
    calib, held_out = np.asarray(tokens[:16]), tokens[16:]
    # int4 weights make the weight error large enough to compare; activations stay int8
    sq, _ = quantize_calibrated(model, params, _w8a8_sq(False, "int4"), calib, progress=False)
    both, report = quantize_calibrated(model, params, _w8a8_sq(True, "int4"), calib,
                                       progress=False)
    q = both["params"]["layers_1"]["mlp"]["down_proj"]["kernel"]
    assert q.meta.format == "int4" and q.meta.activation.format == "int8"
    nibbles = np.asarray(q.codes()).astype(np.int32)
    codes = np.where(nibbles >= 8, nibbles - 16, nibbles)
    assert codes.min() >= -7 and codes.max() <= 7
    layer = report.layers["params/layers_1/mlp/down_proj"]
    assert layer["method"] == "smoothquant" and layer.get("gptq") is True
    assert _err(model, params, both, held_out) < _err(model, params, sq, held_out)


def test_smoothed_hessian_matches_gptq_on_smoothed_inputs():
    """GPTQ with H / (s s^T) on W * s is GPTQ of the layer that reads X / s: the same Hessian
    (to float32 rounding) and the same output error, well below round-to-nearest's. (The codes
    themselves may differ: one rounding flipped by float32 noise changes every later update.)"""
    from jaxquant.core.quantize import quantize_array
    from jaxquant.methods.gptq_core import gptq_quantize

    rng = np.random.default_rng(3)
    x = rng.standard_normal((512, 64)) @ rng.standard_normal((64, 64))
    w = rng.standard_normal((64, 32))
    s = np.exp(rng.uniform(-1, 1, 64))
    spec = jq.WeightScheme("int4", group_size=32).resolve((64, 32), 0, "w")
    xs, ws = x / s, w * s[:, None]
    h_direct = (xs.T @ xs).astype(np.float32)
    h_via = ((x.T @ x).astype(np.float32) / s[:, None] / s[None, :]).astype(np.float32)
    np.testing.assert_allclose(h_via, h_direct, rtol=1e-4, atol=1e-4 * np.abs(h_direct).max())

    def out_err(q):
        d = np.asarray(q.dequantize(jnp.float32), np.float64)
        return np.linalg.norm(xs @ (ws - d)) / np.linalg.norm(xs @ ws)

    w32 = jnp.asarray(ws, jnp.float32)
    direct = out_err(gptq_quantize(w32, jnp.asarray(h_direct), spec))
    via = out_err(gptq_quantize(w32, jnp.asarray(h_via), spec))
    rtn = out_err(quantize_array(w32, spec))
    assert abs(via - direct) < 0.02 * direct and via < 0.8 * rtn


def test_gptq_option_errors():
    rule = jq.get_preset("w8a8-smoothquant").rules[0]
    with pytest.raises(jq.RecipeError, match="gptq=.*true or false"):
        dataclasses.replace(rule, method_args={"gptq": "yes"})
    with pytest.raises(jq.RecipeError, match="applies to awq and smoothquant"):
        dataclasses.replace(rule, method="rtn", method_args={"gptq": True})
    tensor = dataclasses.replace(rule.weight, granularity="tensor")
    with pytest.raises(jq.RecipeError, match="method gptq cannot apply"):
        dataclasses.replace(rule, weight=tensor, method_args={"gptq": True})


def test_float_inputs_option(model_and_data):
    """SmoothQuant calibrates on float inputs unless told otherwise (method_args sequential:
    false is its default): block 1 is calibrated on the float block 0's outputs, so its
    smoothing matches that of an unquantized block 0, and the result stays a valid W8A8 model
    close to the float one; sequential: true calibrates block 1 on the quantized block 0."""
    model, params, tokens = model_and_data
    rule = jq.get_preset("w8a8-smoothquant").rules[0]
    floats = jq.Recipe((dataclasses.replace(rule, method_args={"sequential": False}),))
    stepwise = jq.Recipe((dataclasses.replace(rule, method_args={"sequential": True}),))
    calib = np.asarray(tokens[:16])
    qf, _ = quantize_calibrated(model, params, floats, calib, progress=False)
    qd, _ = quantize_calibrated(model, params, "w8a8-smoothquant", calib, progress=False)
    qs, _ = quantize_calibrated(model, params, stepwise, calib, progress=False)
    # the preset's default
    assert jax.tree.structure(qd) == jax.tree.structure(qf)
    assert all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(qd), jax.tree.leaves(qf)))
    # block 0 sees the same inputs either way; block 1 differs (float vs quantized block 0)
    l0 = lambda q: np.asarray(q["params"]["layers_0"]["input_norm"]["scale"])
    l1 = lambda q: np.asarray(q["params"]["layers_1"]["input_norm"]["scale"])
    np.testing.assert_array_equal(l0(qf), l0(qs))
    assert not np.array_equal(l1(qf), l1(qs))
    # block 1's smoothing is SmoothQuant's on the float model's own block-1 inputs
    from jaxquant.methods import awq_core, smoothquant_core
    from jaxquant.methods.capture import captured_apply

    _, seen = captured_apply(model, quantized=False)(params, jnp.asarray(calib))
    blk = params["params"]["layers_1"]
    ws = [blk["attn"][n]["kernel"] for n in ("q_proj", "k_proj", "v_proj")]
    s = smoothquant_core.smoothing_scales(jnp.abs(seen["layers_1/attn/q_proj"]).max(0), ws,
                                          alpha=0.5)
    np.testing.assert_allclose(l1(qf), awq_core.fold_into_norm(blk["input_norm"]["scale"], s),
                               rtol=1e-5)
    assert _err(model, params, qf, tokens[16:]) < 0.05
    with pytest.raises(jq.RecipeError, match="sequential=.*true or false"):
        dataclasses.replace(rule, method_args={"sequential": "no"})
    with pytest.raises(jq.RecipeError, match="rtn needs no calibration"):
        dataclasses.replace(rule, method="rtn", method_args={"sequential": False})


def test_awq_option_errors():
    rule = jq.get_preset("w4a16-awq").rules[0]
    dataclasses.replace(rule, method_args={"screen": 4})  # valid
    with pytest.raises(jq.RecipeError, match="screen=0 must be an int"):
        dataclasses.replace(rule, method_args={"screen": 0})
    with pytest.raises(jq.RecipeError, match="screen applies to awq"):
        dataclasses.replace(rule, method="gptq", method_args={"screen": 2})
    dataclasses.replace(rule, method_args={"duo_scaling": True})  # valid
    with pytest.raises(jq.RecipeError, match="duo_scaling=1 must be true or false"):
        dataclasses.replace(rule, method_args={"duo_scaling": 1})
    with pytest.raises(jq.RecipeError, match="duo_scaling applies to awq"):
        dataclasses.replace(rule, method="gptq", method_args={"duo_scaling": True})
    dataclasses.replace(rule, method_args={"refine": True})  # valid
    with pytest.raises(jq.RecipeError, match="refine='yes' must be true or false"):
        dataclasses.replace(rule, method_args={"refine": "yes"})
    with pytest.raises(jq.RecipeError, match="refine applies to awq"):
        dataclasses.replace(rule, method="gptq", method_args={"refine": True})
    dataclasses.replace(rule, method_args={"grid": 40})  # valid
    for bad in (0, 40.5, "40", True):
        with pytest.raises(jq.RecipeError, match="grid=.* must be an int >= 1"):
            dataclasses.replace(rule, method_args={"grid": bad})
    with pytest.raises(jq.RecipeError, match="grid sets awq's and smoothquant's"):
        dataclasses.replace(rule, method="gptq", method_args={"grid": 20})


def test_sequential_defaults_per_method():
    """Unset, GPTQ and AWQ (and SmoothQuant followed by GPTQ) calibrate sequentially,
    SmoothQuant alone on float inputs; an explicit method_args sequential always wins."""
    from jaxquant.recipes.recipe import calibrates_sequentially

    sq = jq.get_preset("w8a8-smoothquant").rules[0]
    assert not calibrates_sequentially(sq)
    assert calibrates_sequentially(dataclasses.replace(sq, method_args={"sequential": True}))
    assert calibrates_sequentially(dataclasses.replace(sq, method_args={"gptq": True}))
    assert not calibrates_sequentially(
        dataclasses.replace(sq, method_args={"gptq": True, "sequential": False}))
    for preset in ("w4a16-gptq", "w4a16-awq"):
        assert calibrates_sequentially(jq.get_preset(preset).rules[0])
