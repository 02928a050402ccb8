"""The W4A16 presets: the full-range int4 grid, and w4a16-gptq set to what the method table
measures (act-order, MSE-clipped group ranges)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jaxquant as jq


@pytest.mark.parametrize("name, method", [("w4a16", "rtn"), ("w4a16-gptq", "gptq"),
                                          ("w4a16-awq", "awq")])
def test_w4a16_family_is_int4_full_g128(name, method):
    rule = jq.get_preset(name).rules[0]
    w = rule.weight
    assert (w.format, w.resolved_granularity, w.group_size, w.scale_dtype, w.ragged_groups) == (
        "int4_full", "group", 128, "bfloat16", True)
    assert rule.method == method and rule.activation is None


def test_w4a16_gptq_defaults_to_act_order_and_mse_clip():
    rule = jq.get_preset("w4a16-gptq").rules[0]
    assert rule.weight.clipping == jq.Clipping("mse")
    assert dict(rule.method_args) == {"act_order": True, "damp": 0.01}
    # the preset resolves the same spec as the method table's GPTQ row
    from jaxquant.evaluation.method_table import all_rows

    row = next(r for r in all_rows() if (r.setting, r.method) == ("int4_full g128", "GPTQ"))
    table = row.recipe.rules[0]
    assert table.weight == rule.weight and dict(table.method_args) == dict(rule.method_args)


def test_w4a16_quantizes_onto_sixteen_levels():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((256, 8)), jnp.float32)
    q = jq.quantize({"kernel": x}, "w4a16")["kernel"]
    assert q.format == "int4_full"
    s = np.repeat(np.asarray(q.block_scale(), np.float64), 128, axis=0)
    amax = np.repeat(np.abs(np.asarray(x)).reshape(2, 128, 8).max(axis=1), 128, axis=0)
    np.testing.assert_allclose(s, amax / 7.5, rtol=2**-7)  # bf16 scales, rounded up


def test_w4a16_awq_uses_the_signed_scale_of_the_table_row():
    rule = jq.get_preset("w4a16-awq").rules[0]
    assert rule.weight.clipping == jq.Clipping(signed=True)
    from jaxquant.evaluation.method_table import all_rows

    row = next(r for r in all_rows() if (r.setting, r.method) == ("int4_full g128 (signed scale)",
                                                                 "AWQ"))
    assert row.recipe.rules[0].weight == rule.weight


def test_signed_clipping_must_be_a_bool():
    with pytest.raises(jq.RecipeError, match="signed='yes' must be true or false"):
        jq.WeightScheme("int4_full", group_size=128, clipping=jq.Clipping(signed="yes"))
