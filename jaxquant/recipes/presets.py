"""Named recipes, called like llm-compressor's schemes.

Group presets allow a ragged last group, so they apply to any layer width (SmolLM2's 576 inputs
give four groups of 128 and one of 64); a custom WeightScheme makes that an error by default.

The W4A16 family (w4a16, w4a16-gptq, w4a16-awq) uses the full-range int4 grid (`int4_full`:
scale = amax / 7.5, codes [-8, 7]), llm-compressor's W4A16 and Qwix's int4: sixteen levels
instead of fifteen, and an export that is exactly compressed-tensors' symmetric int4.
w4a16-gptq runs act-order with the MSE clip search choosing each group's range (what the
README's method table measures). w4a16-awq uses the sign-aware scale (Clipping(signed=True):
max(hi / 7, -lo / 8) per group), which keeps the group's extreme, the channel AWQ scaled up,
exactly on the grid (same storage; the method table's "int4_full g128 (signed scale)" row).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from jaxquant.core.spec import Clipping
from jaxquant.errors import RecipeError
from jaxquant.recipes.recipe import DEFAULT_TARGETS, Recipe, Rule
from jaxquant.recipes.schemes import WeightScheme, activation_scheme


def _weight_only(name: str, weight: WeightScheme) -> Recipe:
    return Recipe((Rule(DEFAULT_TARGETS, weight),), name=name)


def _w8a8(name: str, weight: WeightScheme, act_format: str, method: str = "rtn") -> Recipe:
    act = activation_scheme(act_format, "token", dynamic=True)
    return Recipe((Rule(DEFAULT_TARGETS, weight, activation=act, method=method),), name=name)


def _with_method(name: str, base: str, method: str, clipping: Clipping | None = None,
                 **method_args) -> Recipe:
    rule = get_preset(base).rules[0]
    weight = rule.weight if clipping is None else dataclasses.replace(rule.weight,
                                                                      clipping=clipping)
    return Recipe((dataclasses.replace(rule, weight=weight, method=method,
                                       method_args=method_args),), name=name)


_PRESETS: dict[str, Callable[[], Recipe]] = {
    "w8a16": lambda: _weight_only("w8a16", WeightScheme("int8", "channel")),
    "w4a16": lambda: _weight_only(
        "w4a16",
        WeightScheme("int4_full", "group", 128, scale_dtype="bfloat16", ragged_groups=True),
    ),
    "w4a16-asym": lambda: _weight_only(
        "w4a16-asym",
        WeightScheme("uint4", "group", 128, scale_dtype="bfloat16", ragged_groups=True),
    ),
    "nf4": lambda: _weight_only(
        "nf4", WeightScheme("nf4", "group", 64, double_quant=True, ragged_groups=True)
    ),
    "fp8": lambda: _w8a8("fp8", WeightScheme("fp8_e4m3", "channel"), "fp8_e4m3"),
    "w8a8-int8": lambda: _w8a8("w8a8-int8", WeightScheme("int8", "channel"), "int8"),
    "mxfp4": lambda: _weight_only("mxfp4", WeightScheme("mxfp4", ragged_groups=True)),
    "mxfp8": lambda: _weight_only("mxfp8", WeightScheme("mxfp8", ragged_groups=True)),
    "nvfp4": lambda: _weight_only("nvfp4", WeightScheme("nvfp4", ragged_groups=True)),
    "w4a16-gptq": lambda: _with_method("w4a16-gptq", "w4a16", "gptq", Clipping("mse"),
                                       act_order=True, damp=0.01),
    "w4a16-awq": lambda: _with_method("w4a16-awq", "w4a16", "awq", Clipping(signed=True)),
    "w8a8-smoothquant": lambda: _with_method("w8a8-smoothquant", "w8a8-int8", "smoothquant"),
    "fp8-smoothquant": lambda: _with_method("fp8-smoothquant", "fp8", "smoothquant"),
}


def preset_names(calibrated: bool = True) -> list[str]:
    """Preset names; calibrated=False leaves out those whose method needs calibration data
    (gptq, awq, smoothquant), i.e. the ones jaxquant.quantize can apply directly."""
    if calibrated:
        return list(_PRESETS)
    return [n for n in _PRESETS if _PRESETS[n]().rules[0].method == "rtn"]


def get_preset(name: str) -> Recipe:
    """A fresh preset Recipe; unknown names raise RecipeError listing the presets."""
    try:
        return _PRESETS[name.lower()]()
    except KeyError:
        raise RecipeError(
            f"unknown preset {name!r}; presets: {', '.join(_PRESETS)} (or pass a recipe file path)"
        ) from None
