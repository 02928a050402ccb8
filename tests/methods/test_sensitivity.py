"""Sensitivity ladder and mixed-precision recipes under a byte budget."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

import jaxquant as jq
from jaxquant.errors import JaxquantError
from jaxquant.methods.sensitivity import group_of, mixed_recipe, sensitivity
from jaxquant.summary import summary


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        for i in range(3):
            x = x + nn.Dense(128, name=f"layers_{i}_fc")(jnp.tanh(x))
        return x


@pytest.fixture(scope="module")
def setup():
    model = Net()
    x = jax.random.normal(jax.random.key(1), (64, 128))
    params = model.init(jax.random.key(0), x)
    # make layer 1 the sensitive one: its weights (and so its rounding errors) are 20x larger
    k = params["params"]["layers_1_fc"]["kernel"]
    params["params"]["layers_1_fc"]["kernel"] = k * 20.0
    ref = model.apply(params, x)

    def evaluate(p):
        with jq.intercept():
            out = model.apply(p, x)
        return float(jnp.mean((out - ref) ** 2)) + 1.0

    return params, evaluate


def test_ladder_ranks_the_fragile_layer_first_and_budget_upgrades_it(setup):
    params, evaluate = setup
    low, high = jq.get_preset("w4a16"), jq.get_preset("w8a16")
    # per-layer groups (names have no layers_N/ segment here)
    base, costs = sensitivity(params, low, high, evaluate, granularity="layer", progress=False)
    assert base == 1.0
    assert "layers_1_fc" in costs[0].group
    assert all(costs[i].delta >= costs[i + 1].delta for i in range(len(costs) - 1))
    other = summary(jq.quantize(params, low)).float_bytes
    budget = other + sum(c.low_bytes for c in costs) + (costs[0].high_bytes - costs[0].low_bytes)
    recipe, total, upgraded = mixed_recipe(low, high, costs, budget, other)
    assert upgraded == [costs[0].group] and total <= budget
    mixed = jq.quantize(params, recipe)
    assert mixed["params"]["layers_1_fc"]["kernel"].format == "int8"
    assert mixed["params"]["layers_0_fc"]["kernel"].format == low.rules[0].weight.format
    assert summary(mixed).total_bytes_after == total
    assert evaluate(mixed) < evaluate(jq.quantize(params, low))


def test_budget_below_all_low_is_an_error(setup):
    params, evaluate = setup
    low, high = jq.get_preset("w4a16"), jq.get_preset("w8a16")
    _, costs = sensitivity(params, low, high, evaluate, granularity="layer", progress=False)
    with pytest.raises(JaxquantError, match="below the all-low-precision size"):
        mixed_recipe(low, high, costs, 10, 0)


def test_group_patterns():
    p = "params/layers_12/attn/q_proj/kernel"
    assert group_of(p, "type") == r"params/layers_\d+/attn/q_proj/kernel$"
    assert group_of(p, "block") == r"(^|/)layers_12/"
    with pytest.raises(JaxquantError, match="granularity"):
        group_of(p, "row")


def test_plot_without_matplotlib_fails_before_measuring(monkeypatch):
    import importlib.util

    from jaxquant import cli
    from jaxquant.cli import pipeline

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))

    def no_model(name):
        raise AssertionError("the model was loaded before the --plot check")

    monkeypatch.setattr(pipeline, "cached_model", no_model)
    args = cli.build_parser().parse_args(["sensitivity", "--plot", "ladder.png"])
    with pytest.raises(JaxquantError, match="--plot needs matplotlib"):
        cli.cmd_sensitivity(args)
