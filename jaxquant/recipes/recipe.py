"""Recipes: ordered rules mapping parameter paths (or module classes) to schemes and methods."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

from jaxquant.core.spec import ActivationSpec
from jaxquant.errors import RecipeError
from jaxquant.kernels.decode_attention.layouts import KVCacheSpec
from jaxquant.recipes.schemes import WeightScheme

METHODS = ("rtn", "gptq", "awq", "smoothquant")

# The sensitivity ladder: the output head, embeddings, norms and biases stay in full precision
# unless a recipe replaces this list.
DEFAULT_IGNORE: tuple[str, ...] = (
    r"re:(^|/)(lm_head|head|output|classifier|logits)(/|$)",
    r"re:(^|/)[^/]*(embed|wte|wpe)[^/]*(/|$)",
    r"re:(^|/)[^/]*norm[^/]*(/|$)",
    r"re:(^|/)bias$",
)
DEFAULT_TARGETS: tuple[str, ...] = (r"re:(^|/)kernel$",)

_CLASS_NAME = re.compile(r"^[A-Z][A-Za-z0-9_]*$")


def target_matches(target: str, path: str, module_type: str | None) -> bool:
    """A target is a module class name (e.g. "Dense", "Linear": matched against the type of the
    module owning the parameter), "re:<regex>", or a bare regex; regexes use re.search on the
    '/'-joined parameter path."""
    if target.startswith("re:"):
        return re.search(target[3:], path) is not None
    if _CLASS_NAME.match(target):
        return module_type == target
    return re.search(target, path) is not None


def _check_patterns(patterns: tuple[str, ...], where: str) -> None:
    for p in patterns:
        if not isinstance(p, str):
            raise RecipeError(f"{where}: {p!r} is not a string")
        try:
            re.compile(p[3:] if p.startswith("re:") else p)
        except re.error as e:
            raise RecipeError(f"{where}: invalid regex {p!r}: {e}") from None


def uses_gptq(rule: "Rule") -> bool:
    """The rule's weights are quantized by GPTQ: method gptq, or AWQ/SmoothQuant with
    method_args gptq (smoothing first, then GPTQ on the smoothed weights and Hessian, as
    llm-compressor's SmoothQuant + GPTQ W8A8 recipe)."""
    return rule.method == "gptq" or (rule.method in ("awq", "smoothquant")
                                     and rule.method_args.get("gptq", False) is True)


def calibrates_sequentially(rule: "Rule") -> bool:
    """Whether the block after this rule's layers is calibrated on the quantized block's outputs
    (method_args sequential: true) or on the float block's (false). Unset, GPTQ and AWQ are
    sequential, as GPTQ and llm-compressor run them; SmoothQuant alone is not, as in the
    SmoothQuant paper and Qwix: its scales read only per-channel activation maxima, and the
    second pass through the quantized block costs a forward without lowering perplexity on
    SmolLM2 (README, 2026-12-02). SmoothQuant with method_args gptq is sequential."""
    default = rule.method != "smoothquant" or uses_gptq(rule)
    return rule.method_args.get("sequential", default) is True


AWQ_ONLY_ARGS = ("screen", "duo_scaling", "refine")  # method_args that only awq reads


def _check_method(rule: "Rule") -> None:
    """Methods that cannot apply to the rule's scheme fail when the recipe is built."""
    from jaxquant.formats.registry import get_format

    w, fmt = rule.weight, get_format(rule.weight.format)
    gran = w.resolved_granularity
    seq = rule.method_args.get("sequential", True)
    if seq not in (True, False):
        raise RecipeError(f"method_args sequential={seq!r} must be true or false")
    if seq is False and rule.method == "rtn":
        raise RecipeError("method_args sequential applies to calibrated methods (gptq, awq, "
                          "smoothquant); rtn needs no calibration")
    then_gptq = rule.method_args.get("gptq", False)
    if then_gptq not in (True, False):
        raise RecipeError(f"method_args gptq={then_gptq!r} must be true or false")
    if then_gptq and rule.method not in ("awq", "smoothquant"):
        raise RecipeError(f"method_args gptq applies to awq and smoothquant (GPTQ on the smoothed "
                          f"weights); for {rule.method!r} use method: gptq")
    if uses_gptq(rule):
        if gran not in ("group", "channel") or w.channel_axes is not None:
            raise RecipeError(
                f"method gptq cannot apply to {w.format} with {gran} scales: GPTQ updates the "
                "weights as it sweeps, so scales must be per output channel or per group along "
                "the contraction axis (granularity 'channel' or 'group')"
            )
        if fmt.scale_kind == "nvfp4" or w.double_quant:
            raise RecipeError(f"method gptq cannot apply to {w.format}"
                              f"{' with double_quant' if w.double_quant else ''}: its scales "
                              "depend on the whole tensor; use an INT, FP8 or MX format")
    if rule.method == "smoothquant" and rule.activation is None:
        raise RecipeError("method smoothquant migrates activation outliers into the weights and "
                          "needs an activation scheme (e.g. the w8a8-int8 or fp8 scheme)")
    if rule.method == "smoothquant":
        alpha = rule.method_args.get("alpha", 0.5)
        if alpha != "auto" and (isinstance(alpha, (bool, str)) or not 0.0 <= float(alpha) <= 1.0):
            raise RecipeError(f"smoothquant alpha={alpha!r} must be in [0, 1] or \"auto\" (a "
                              "search per group of layers for the least W8A8 output error)")
    for name in AWQ_ONLY_ARGS:
        if name in rule.method_args and rule.method != "awq":
            raise RecipeError(f"method_args {name} applies to awq's scale search, not "
                              f"{rule.method!r}")
    screen = rule.method_args.get("screen", 1)
    if isinstance(screen, bool) or not isinstance(screen, int) or screen < 1:
        raise RecipeError(f"awq screen={screen!r} must be an int >= 1 (1: the whole alpha grid "
                          "on every output column; s > 1 screens it on every s-th column first)")
    grid = rule.method_args.get("grid", 20)
    if "grid" in rule.method_args and rule.method not in ("awq", "smoothquant"):
        raise RecipeError(f"method_args grid sets awq's and smoothquant's alpha search, not "
                          f"{rule.method!r}'s")
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise RecipeError(f"{rule.method} grid={grid!r} must be an int >= 1 (the number of "
                          "alphas searched: 20 for awq, 10 for smoothquant by default)")
    duo = rule.method_args.get("duo_scaling", False)
    if not isinstance(duo, bool):
        raise RecipeError(f"awq duo_scaling={duo!r} must be true or false (true: s = mean|x|^a / "
                          "mean|w|^(1-a), AutoAWQ's duo scaling)")
    refine = rule.method_args.get("refine", False)
    if not isinstance(refine, bool):
        raise RecipeError(f"awq refine={refine!r} must be true or false (true: every 4th alpha "
                          "of the grid, then the 3 on each side of their best)")
    if uses_gptq(rule) and not 0 < float(rule.method_args.get("damp", 0.01)) <= 1:
        raise RecipeError(f"gptq damp={rule.method_args['damp']} must be in (0, 1]")


@dataclasses.dataclass(frozen=True)
class Rule:
    """targets/ignore select parameters; weight (and optional activation) say how; method says
    which algorithm picks the quantized values ("rtn": round to nearest)."""

    targets: tuple[str, ...]
    weight: WeightScheme
    ignore: tuple[str, ...] = ()
    activation: ActivationSpec | None = None
    method: str = "rtn"
    method_args: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "ignore", tuple(self.ignore))
        if not self.targets:
            raise RecipeError("rule.targets is empty; give at least one regex or class name")
        _check_patterns(self.targets, "rule.targets")
        _check_patterns(self.ignore, "rule.ignore")
        if self.method not in METHODS:
            raise RecipeError(f"unknown method {self.method!r}; available: {', '.join(METHODS)}")
        _check_method(self)

    def matches(self, path: str, module_type: str | None = None) -> bool:
        return any(target_matches(t, path, module_type) for t in self.targets) and not any(
            target_matches(t, path, module_type) for t in self.ignore
        )


@dataclasses.dataclass(frozen=True)
class Recipe:
    """An ordered list of rules (the first matching rule wins) plus a recipe-wide ignore list;
    kv_cache: how the decoder stores K/V at run time (None: in the compute dtype), independent
    of the weight rules."""

    rules: tuple[Rule, ...]
    ignore: tuple[str, ...] = DEFAULT_IGNORE
    name: str = "custom"
    kv_cache: KVCacheSpec | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        object.__setattr__(self, "ignore", tuple(self.ignore))
        if not self.rules:
            raise RecipeError("recipe has no rules")
        _check_patterns(self.ignore, "recipe.ignore")

    def rule_for(self, path: str, module_type: str | None = None) -> tuple[int, Rule] | None:
        """(index, rule) of the first rule that quantizes `path`, or None to keep it in float."""
        if any(target_matches(t, path, module_type) for t in self.ignore):
            return None
        for i, rule in enumerate(self.rules):
            if rule.matches(path, module_type):
                return i, rule
        return None
