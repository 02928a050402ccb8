"""Presets, recipe files (YAML / JSON round trips, strict keys) and the errors users see."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import yaml

import jaxquant as jq
from jaxquant.core.spec import Clipping
from jaxquant.errors import FormatError, GranularityError, RecipeError
from jaxquant.recipes import recipe_from_dict, recipe_to_dict

KERNEL_SHAPES = [(576, 1536), (1536, 576), (256, 512), (64, 10)]


@pytest.mark.parametrize("name", jq.preset_names())
def test_every_preset_builds_and_resolves(name):
    recipe = jq.get_preset(name)
    assert isinstance(recipe, jq.Recipe) and recipe.name == name and recipe.rules
    assert jq.get_preset(name.upper()) == recipe      # case-insensitive
    assert jq.get_preset(name) is not recipe          # a fresh object every time
    for rule in recipe.rules:
        for shape in KERNEL_SHAPES:
            spec = rule.weight.resolve(shape, 0, f"layer/{name}/kernel")
            assert len(spec.block_shape) == 2 and spec.axis == 0
            jq.get_format(spec.format)


def custom_recipe() -> jq.Recipe:
    """A recipe using every field, to round-trip more than the presets do."""
    return jq.Recipe(
        rules=(
            jq.Rule(
                targets=("re:attn/(q|k|v)_proj/kernel$", "Dense"),
                ignore=("re:layers_0/",),
                weight=jq.WeightScheme(
                    "uint4", "group", 64, scale_dtype="bfloat16",
                    clipping=Clipping(method="mse", grid=10, max_shrink=0.3, norm=2.4),
                    ragged_groups=True,
                ),
            ),
            jq.Rule(
                targets=("re:mlp/",),
                weight=jq.WeightScheme("int8", "block", block=(32, 16), axis=1),
                activation=jq.activation_scheme("int8", "tensor", dynamic=False, clipping=Clipping(
                    method="percentile", percentile=99.5)),
            ),
            jq.Rule(
                targets=("re:kernel$",),
                weight=jq.WeightScheme("fp8_e5m2", "channel", channel_axes=(1, 2)),
                activation=jq.activation_scheme("fp8_e4m3"),
            ),
            jq.Rule(targets=("re:embed",), weight=jq.WeightScheme("nf4", double_quant=True)),
        ),
        ignore=("re:lm_head", "re:(^|/)bias$"),
        name="everything",
    )


ROUND_TRIP_RECIPES = [(n, lambda n=n: jq.get_preset(n)) for n in jq.preset_names()] + [
    ("custom", custom_recipe)
]


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
@pytest.mark.parametrize("name,build", ROUND_TRIP_RECIPES, ids=[n for n, _ in ROUND_TRIP_RECIPES])
def test_save_then_load_gives_an_equal_recipe(tmp_path, name, build, suffix):
    recipe = build()
    path = tmp_path / f"{name}{suffix}"
    jq.save_recipe(recipe, path)
    loaded = jq.load_recipe(path)
    assert loaded == recipe
    # the file is plain data in the documented layout
    text = path.read_text()
    data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    assert set(data) == {"name", "ignore", "rules"}
    assert recipe_from_dict(data) == recipe
    assert recipe_to_dict(loaded) == data
    # and a path string works as the `recipe` argument of quantize (resolve_recipe)
    assert jq.load_recipe(str(path)) == recipe


def test_save_rejects_unknown_extension(tmp_path):
    with pytest.raises(RecipeError, match=r"\.yaml, \.yml or \.json"):
        jq.save_recipe(jq.get_preset("w8a16"), tmp_path / "r.toml")


def test_unknown_preset_lists_the_presets():
    with pytest.raises(RecipeError) as e:
        jq.get_preset("w3a16")
    msg = str(e.value)
    assert "w3a16" in msg
    for name in jq.preset_names():
        assert name in msg
    with pytest.raises(RecipeError) as e:
        jq.quantize({"dense": {"kernel": jnp.ones((8, 8))}}, "w3a16")
    assert all(name in str(e.value) for name in jq.preset_names())


def test_unknown_format_lists_the_formats():
    for make in (lambda: jq.get_format("int5"), lambda: jq.WeightScheme("int5"),
                 lambda: recipe_from_dict({"rules": [{"targets": ["kernel"],
                                                       "weight": {"format": "int5"}}]})):
        with pytest.raises(FormatError) as e:
            make()
        msg = str(e.value)
        assert "int5" in msg
        for name in jq.format_names():
            assert name in msg
    with pytest.raises(FormatError) as e:
        jq.activation_scheme("nf4")
    assert "nf4" in str(e.value) and "int8" in str(e.value) and "fp8_e4m3" in str(e.value)


GOOD = {"targets": ["re:kernel$"], "weight": {"format": "int4", "group_size": 32}}


@pytest.mark.parametrize(
    "doc,key,where",
    [
        ({"rules": [GOOD], "rulez": []}, "rulez", "recipe"),
        ({"rules": [{**GOOD, "target": ["x"]}]}, "target", "rules[0]"),
        ({"rules": [GOOD, {**GOOD, "weights": {}}]}, "weights", "rules[1]"),
        ({"rules": [{"targets": ["k"], "weight": {"format": "int4", "groupsize": 32}}]},
         "groupsize", "rules[0].weight"),
        ({"rules": [{"targets": ["k"], "weight": {"format": "int4", "clipping": {
            "method": "percentile", "percentil": 99}}}]}, "percentil", "rules[0].weight.clipping"),
        ({"rules": [{"targets": ["k"], "weight": {"format": "int8"}, "activation": {
            "format": "int8", "granularty": "token"}}]}, "granularty", "rules[0].activation"),
    ],
)
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_unknown_keys_are_errors_naming_the_key(tmp_path, doc, key, where, suffix):
    path = tmp_path / f"r{suffix}"
    path.write_text(json.dumps(doc) if suffix == ".json" else yaml.safe_dump(doc))
    with pytest.raises(RecipeError) as e:
        jq.load_recipe(path)
    msg = str(e.value)
    assert repr(key) in msg and msg.startswith(where + ":")
    assert "allowed keys" in msg


def test_other_malformed_files(tmp_path):
    cases = {
        "missing.yaml": None,
        "broken.yaml": "rules: [",
        "broken.json": "{",
        "empty_rules.yaml": "rules: []",
        "no_targets.yaml": "rules:\n  - weight: {format: int8}\n",
        "no_format.yaml": "rules:\n  - targets: [k]\n    weight: {group_size: 32}\n",
        "both.yaml": "rules:\n  - targets: [k]\n    scheme: w4a16\n    weight: {format: int8}\n",
        "neither.yaml": "rules:\n  - targets: [k]\n",
        "not_a_mapping.yaml": "- 1\n- 2\n",
        "bad_method.yaml": "rules:\n  - targets: [k]\n    weight: {format: int8}\n    method: magic\n",
    }
    messages = {
        "missing.yaml": "does not exist", "broken.yaml": "not valid YAML/JSON",
        "broken.json": "not valid YAML/JSON", "empty_rules.yaml": "non-empty list",
        "no_targets.yaml": "missing 'targets'", "no_format.yaml": "missing 'format'",
        "both.yaml": "not both", "neither.yaml": "needs 'weight'",
        "not_a_mapping.yaml": "expected a mapping", "bad_method.yaml": "unknown method 'magic'",
    }
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(RecipeError, match=messages[name]):
            jq.load_recipe(path)


def test_scheme_shorthand_in_a_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: short\nrules:\n  - targets: ['re:kernel$']\n    scheme: w4a16\n")
    r = jq.load_recipe(path)
    assert r.rules[0].weight == jq.get_preset("w4a16").rules[0].weight
    assert r.name == "short" and r.ignore == jq.recipes.DEFAULT_IGNORE


@pytest.mark.parametrize("where", ["targets", "ignore", "recipe_ignore"])
def test_invalid_regex_is_an_error(tmp_path, where):
    bad = "re:layers_(0|1"
    rule = {"targets": ["re:kernel$"], "weight": {"format": "int8"}}
    doc = {"rules": [rule]}
    if where == "recipe_ignore":
        doc["ignore"] = [bad]
    else:
        rule[where] = [bad]
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(RecipeError) as e:
        jq.load_recipe(path)
    assert "invalid regex" in str(e.value) and bad in str(e.value)
    with pytest.raises(RecipeError, match="invalid regex"):
        jq.Rule(targets=("re:(",), weight=jq.WeightScheme("int8"))
    with pytest.raises(RecipeError, match="invalid regex"):
        jq.Rule(targets=("[unclosed",), weight=jq.WeightScheme("int8"))


def test_group_size_that_does_not_divide_names_parameter_and_sizes():
    scheme = jq.WeightScheme("int4", "group", 256)
    with pytest.raises(GranularityError) as e:
        scheme.resolve((384, 64), 0, "layers_3/mlp/up/kernel")
    msg = str(e.value)
    assert "layers_3/mlp/up/kernel" in msg
    assert "256" in msg and "384" in msg
    assert "16, 32, 64, 128" in msg  # the group sizes that divide 384
    assert "ragged_groups" in msg
    # through quantize: the error names the leaf path
    params = {"params": {"Dense_0": {"kernel": jnp.ones((384, 64), jnp.float32)}}}
    recipe = jq.Recipe((jq.Rule(("re:kernel$",), scheme),))
    with pytest.raises(GranularityError, match="params/Dense_0/kernel"):
        jq.quantize(params, recipe)
    # nothing divides: the hint says so and points at per-channel
    with pytest.raises(GranularityError, match="none of 16..1024.*channel"):
        scheme.resolve((300, 8), 0, "w")
    # the opt-in: ragged last group
    spec = jq.WeightScheme("int4", "group", 256, ragged_groups=True).resolve((384, 64), 0, "w")
    assert spec.block_shape == (256, 1)


def test_block_that_does_not_tile_names_the_sizes():
    with pytest.raises(GranularityError) as e:
        jq.WeightScheme("int8", "block", block=(128, 100)).resolve((256, 384), 0, "proj/kernel")
    msg = str(e.value)
    assert "proj/kernel" in msg and "384" in msg and "100" in msg


@pytest.mark.parametrize(
    "kwargs,fixed",
    [
        (dict(format="mxfp4", group_size=64), 32),
        (dict(format="mxfp8", group_size=16), 32),
        (dict(format="mxfp4", granularity="channel"), 32),
        (dict(format="nvfp4", group_size=32), 16),
        (dict(format="nvfp4", granularity="tensor"), 16),
    ],
)
def test_mx_and_nvfp4_reject_a_custom_group(kwargs, fixed):
    with pytest.raises(FormatError) as e:
        jq.WeightScheme(**kwargs)
    assert kwargs["format"] in str(e.value) and str(fixed) in str(e.value)
    # and from a recipe file
    with pytest.raises(FormatError):
        recipe_from_dict({"rules": [{"targets": ["k"], "weight": kwargs}]})
    # the fixed size itself is fine
    jq.WeightScheme(kwargs["format"], group_size=fixed)


def test_other_scheme_errors():
    with pytest.raises(RecipeError, match="scale_dtype"):
        jq.WeightScheme("int8", scale_dtype="float16")
    with pytest.raises(GranularityError, match="positive"):
        jq.WeightScheme("int4", group_size=0)
    with pytest.raises(GranularityError, match="block"):
        jq.WeightScheme("int8", "block")
    with pytest.raises(FormatError, match="nf4"):
        jq.WeightScheme("int4", double_quant=True)
    with pytest.raises(GranularityError, match="scalar"):
        jq.WeightScheme("int8").resolve((), 0, "s")
    with pytest.raises(GranularityError, match="axis"):
        jq.WeightScheme("int8", axis=3).resolve((4, 4), 0, "w")
    with pytest.raises(RecipeError, match="no rules"):
        jq.Recipe(())
    with pytest.raises(RecipeError, match="empty"):
        jq.Rule((), jq.WeightScheme("int8"))


def test_scheme_resolution_defaults():
    assert jq.WeightScheme("int8").resolve((64, 32), 0, "w").block_shape == (64, 1)
    assert jq.WeightScheme("int8", "tensor").resolve((64, 32), 0, "w").block_shape == (64, 32)
    assert jq.WeightScheme("nf4").resolve((128, 32), 0, "w").block_shape == (64, 1)
    assert jq.WeightScheme("mxfp4").resolve((64, 32), 0, "w").block_shape == (32, 1)
    assert jq.WeightScheme("nvfp4").resolve((64, 32), 1, "w").block_shape == (1, 16)
    assert jq.WeightScheme("int4", group_size=16).resolve((4, 64, 32), 1, "w").block_shape == (
        1, 16, 1)
    assert jq.WeightScheme("int8", channel_axes=(2,)).resolve((4, 64, 32), 1, "w").block_shape == (
        4, 64, 1)
    assert jq.WeightScheme("int8", "block", block=(16, 8)).resolve((4, 64, 32), 1, "w") \
        .block_shape == (1, 16, 8)
    np.testing.assert_equal(jq.WeightScheme("int8").resolve((10,), 0, "b").block_shape, (10,))
