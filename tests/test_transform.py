"""jaxquant.quantize / dequantize / summary over Flax parameter trees (Linen dicts, NNX State)."""

from __future__ import annotations

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxquant as jq
from jaxquant.errors import LeafError

VOCAB, D, H = 100, 64, 96


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, ids):
        x = nn.Embed(VOCAB, D, name="embed")(ids)
        x = nn.LayerNorm(name="norm")(x)
        x = nn.Dense(H, name="up")(x)
        x = nn.Dense(D, name="down")(nn.gelu(x))
        return nn.Dense(VOCAB, name="head")(x)


class NNXMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Embed(VOCAB, D, rngs=rngs)
        self.norm = nnx.LayerNorm(D, rngs=rngs)
        self.up = nnx.Linear(D, H, rngs=rngs)
        self.down = nnx.Linear(H, D, rngs=rngs)
        self.head = nnx.Linear(D, VOCAB, rngs=rngs)

    def __call__(self, ids):
        x = self.norm(self.embed(ids))
        return self.head(self.down(nn.gelu(self.up(x))))


IDS = jnp.arange(12, dtype=jnp.int32).reshape(2, 6)


def linen_setup():
    model = LinenMLP()
    return model, model.init(jax.random.key(0), IDS)


def nnx_setup():
    model = NNXMLP(nnx.Rngs(0))
    return model, nnx.state(model)


def paths(tree):
    from jaxquant.tree_paths import flatten

    return dict(flatten(tree)[0])


RTN_PRESETS = [n for n in jq.preset_names() if jq.get_preset(n).rules[0].method == "rtn"]
CALIBRATED_PRESETS = [n for n in jq.preset_names() if n not in RTN_PRESETS]

# Relative Frobenius error of dequantize(quantize(W)) for N(0, sigma) kernels of 64-96 rows.
# Measured: int8 0.005, fp8 0.026, mxfp8 0.03, int4 g128 0.089, uint4 0.08, nf4 0.09,
# mxfp4 0.11, nvfp4 0.10; the bounds leave ~1.5x.
MAX_REL_ERROR = {
    "w8a16": 0.008, "w8a8-int8": 0.008, "fp8": 0.04, "mxfp8": 0.05, "w4a16": 0.13,
    "w4a16-asym": 0.12, "nf4": 0.13, "mxfp4": 0.16, "nvfp4": 0.15,
}
FORMAT_OF = {
    "w8a16": "int8", "w8a8-int8": "int8", "fp8": "fp8_e4m3", "mxfp8": "mxfp8", "w4a16": "int4_full",
    "w4a16-asym": "uint4", "nf4": "nf4", "mxfp4": "mxfp4", "nvfp4": "nvfp4",
}


def test_preset_table_is_complete():
    assert set(RTN_PRESETS) == set(MAX_REL_ERROR)


@pytest.mark.parametrize("kind", ["linen", "nnx"])
@pytest.mark.parametrize("preset", RTN_PRESETS)
def test_every_preset_round_trips(kind, preset):
    model, params = linen_setup() if kind == "linen" else nnx_setup()
    prefix = "params/" if kind == "linen" else ""
    q = jq.quantize(params, preset)
    # default targets are kernels; the default ignore list keeps embeddings, norms, biases and
    # the head in float
    flat, qflat = paths(params), paths(q)
    assert set(flat) == set(qflat)
    quantized = {p for p, leaf in qflat.items() if jq.is_qarray(leaf)}
    assert quantized == {f"{prefix}up/kernel", f"{prefix}down/kernel"}
    for p in qflat:
        if p not in quantized:
            assert qflat[p] is flat[p]
    for p in quantized:
        assert qflat[p].format == FORMAT_OF[preset]
        assert qflat[p].nbytes < flat[p].nbytes
        act = jq.get_preset(preset).rules[0].activation
        assert qflat[p].meta.activation == act
    # dequantize: same structure, shapes and dtypes; error small for the format
    d = jq.dequantize(q)
    assert jax.tree_util.tree_structure(d) == jax.tree_util.tree_structure(params)
    dflat = paths(d)
    for p, leaf in flat.items():
        assert dflat[p].shape == leaf.shape and dflat[p].dtype == leaf.dtype
    for p in quantized:
        w = np.asarray(flat[p], np.float64)
        rel = np.linalg.norm(np.asarray(dflat[p], np.float64) - w) / np.linalg.norm(w)
        assert 0 < rel < MAX_REL_ERROR[preset], (p, rel)
    # the model still runs on the dequantized parameters, close to the original
    if kind == "linen":
        y0, y1 = model.apply(params, IDS), model.apply(d, IDS)
    else:
        y0 = model(IDS)
        m2 = nnx.merge(nnx.graphdef(model), d)
        y1 = m2(IDS)
    rel_out = float(jnp.linalg.norm(y1 - y0) / jnp.linalg.norm(y0))
    assert rel_out < 2 * MAX_REL_ERROR[preset]
    # the summary lists the quantized paths and their formats, and the float leaves
    s = jq.summary(q, reference=params)
    text = str(s)
    for p in quantized:
        assert p in text
    assert FORMAT_OF[preset] in text
    assert f"({len(flat) - 2} leaves kept in float)" in text
    assert "x smaller" in text
    assert len(s.rows) == 2 and s.compression > 1
    for row in s.rows:
        assert 0 < row.rel_error < MAX_REL_ERROR[preset]
        assert row.bytes_after == qflat[row.path].nbytes
    assert s.to_dict()["bytes_after"] == s.total_bytes_after


@pytest.mark.parametrize("preset", CALIBRATED_PRESETS)
def test_calibrated_presets_are_refused_by_plain_quantize(preset):
    _, params = linen_setup()
    with pytest.raises(jq.JaxquantError, match="calibrat"):
        jq.quantize(params, preset)


def test_bf16_tree_keeps_bf16():
    _, params = linen_setup()
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), params)
    d = jq.dequantize(jq.quantize(params, "w4a16"))
    for leaf in jax.tree_util.tree_leaves(d):
        assert leaf.dtype == jnp.bfloat16
    d32 = jq.dequantize(jq.quantize(params, "w4a16"), jnp.float32)
    assert paths(d32)["params/up/kernel"].dtype == jnp.float32


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("kind", ["linen", "nnx"])
def test_nan_or_inf_weight_is_an_error_naming_the_leaf(kind, bad):
    _, params = linen_setup() if kind == "linen" else nnx_setup()
    path = "params/down/kernel" if kind == "linen" else "down/kernel"

    def poison(p, leaf):
        return leaf.at[3, 5].set(bad) if p == path else leaf

    from jaxquant.tree_paths import map_with_path

    params = map_with_path(poison, params)
    with pytest.raises(LeafError) as e:
        jq.quantize(params, "w8a16")
    msg = str(e.value)
    assert path in msg and "NaN or Inf" in msg and "(3, 5)" in msg


def test_integer_leaf_targeted_is_an_error():
    _, params = linen_setup()
    params = {"params": {**params["params"], "step": {"kernel": jnp.arange(12).reshape(3, 4)}}}
    with pytest.raises(LeafError) as e:
        jq.quantize(params, "w8a16")
    assert "params/step/kernel" in str(e.value) and "int32" in str(e.value)
    assert "ignore" in str(e.value)
    # ignoring it is the fix
    recipe = jq.get_preset("w8a16")
    recipe = jq.Recipe(recipe.rules, ignore=recipe.ignore + ("re:step/",))
    assert not jq.is_qarray(paths(jq.quantize(params, recipe))["params/step/kernel"])


def test_already_quantized_tree_is_an_error():
    _, params = linen_setup()
    q = jq.quantize(params, "w8a16")
    with pytest.raises(LeafError, match=r"params/(up|down)/kernel is already quantized \(int8\)"):
        jq.quantize(q, "w4a16")


def test_rule_that_matches_nothing_warns_listing_it():
    _, params = linen_setup()
    recipe = jq.Recipe((
        jq.Rule(("re:kernel$",), jq.WeightScheme("int8")),
        jq.Rule(("re:attention/",), jq.WeightScheme("int4", group_size=32)),
        jq.Rule(("Conv",), jq.WeightScheme("int4", group_size=32)),
    ), name="partly-dead")
    with pytest.warns(UserWarning) as record:
        jq.quantize(params, recipe)
    msg = " ".join(str(w.message) for w in record)
    assert "partly-dead" in msg and "rules[1]" in msg and "re:attention/" in msg
    assert "rules[2]" in msg and "Conv" in msg and "rules[0]" not in msg
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jq.quantize(params, "w8a16")  # every rule used: no warning


def test_class_name_targets_linen():
    model, params = linen_setup()
    types = jq.linen_module_types(model, IDS)
    assert types["params/up"] == "Dense" and types["params/embed"] == "Embed"
    assert types["params/norm"] == "LayerNorm"
    recipe = jq.Recipe((jq.Rule(("Dense",), jq.WeightScheme("int8")),))
    q = paths(jq.quantize(params, recipe, module_types=types))
    quantized = {p for p, leaf in q.items() if jq.is_qarray(leaf)}
    assert quantized == {"params/up/kernel", "params/down/kernel"}  # head, biases ignored
    # no ignore list: every Dense parameter, biases and head included; nothing else
    recipe = jq.Recipe((jq.Rule(("Dense",), jq.WeightScheme("int8")),), ignore=())
    q = paths(jq.quantize(params, recipe, module_types=types))
    quantized = {p for p, leaf in q.items() if jq.is_qarray(leaf)}
    assert quantized == {f"params/{m}/{k}" for m in ("up", "down", "head")
                         for k in ("kernel", "bias")}
    # an Embed class target with the embedding's contraction axis (the last one)
    recipe = jq.Recipe((jq.Rule(("Embed",), jq.WeightScheme("int8")),), ignore=())
    emb = paths(jq.quantize(params, recipe, module_types=types))["params/embed/embedding"]
    assert emb.meta.axis == 1 and emb.meta.block_shape == (1, D)  # one scale per token row
    # without module types a class name matches nothing
    with pytest.warns(UserWarning, match="Dense"):
        jq.quantize(params, jq.Recipe((jq.Rule(("Dense",), jq.WeightScheme("int8")),)))


def test_class_name_targets_nnx():
    model, state = nnx_setup()
    types = jq.nnx_module_types(model)
    assert types["up"] == "Linear" and types["norm"] == "LayerNorm"
    recipe = jq.Recipe((jq.Rule(("Linear",), jq.WeightScheme("int4", group_size=32)),))
    q = jq.quantize(state, recipe, module_types=types)
    quantized = {p for p, leaf in paths(q).items() if jq.is_qarray(leaf)}
    assert quantized == {"up/kernel", "down/kernel"}
    assert isinstance(q, nnx.State)
    m2 = nnx.merge(nnx.graphdef(model), jq.dequantize(q))
    assert m2(IDS).shape == (2, 6, VOCAB)


def test_default_ignore_keeps_sensitive_leaves_in_float():
    tree = {
        "model": {
            "embed_tokens": {"embedding": jnp.ones((32, 16))},
            "wte": {"embedding": jnp.ones((32, 16))},
            "layers_0": {
                "input_layernorm": {"scale": jnp.ones((16,)), "kernel": jnp.ones((16, 16))},
                "mlp": {"kernel": jnp.ones((16, 32)), "bias": jnp.ones((32,))},
                "rms_norm": {"kernel": jnp.ones((16, 16))},
            },
            "lm_head": {"kernel": jnp.ones((16, 32))},
            "head": {"kernel": jnp.ones((16, 32))},
            "classifier": {"kernel": jnp.ones((16, 32))},
            "output": {"kernel": jnp.ones((16, 32))},
        }
    }
    q = paths(jq.quantize(tree, "w8a16"))
    quantized = {p for p, leaf in q.items() if jq.is_qarray(leaf)}
    assert quantized == {"model/layers_0/mlp/kernel"}


@pytest.mark.parametrize("preset", ["w4a16", "nf4", "nvfp4", "w8a8-int8"])
def test_quantize_under_jit_equals_eager(preset):
    _, params = linen_setup()
    eager = jq.quantize(params, preset)
    jitted = jax.jit(lambda p: jq.quantize(p, preset))(params)
    assert jax.tree_util.tree_structure(eager, is_leaf=jq.is_qarray) == \
        jax.tree_util.tree_structure(jitted, is_leaf=jq.is_qarray)
    for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a).reshape(-1).view(np.uint8),
                                      np.asarray(b).reshape(-1).view(np.uint8))
    for p, leaf in paths(eager).items():
        if jq.is_qarray(leaf):
            assert paths(jitted)[p].meta == leaf.meta
