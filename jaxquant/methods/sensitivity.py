"""Layer sensitivity and mixed-precision recipes under a byte budget.

`sensitivity` quantizes one group of layers at a time (one layer type across all blocks, one
decoder block, or one layer) with the low-precision recipe, keeps the rest in float, and measures
the perplexity cost of each on calibration text. `mixed_recipe` starts from every targeted layer
in low precision and moves the groups with the highest cost per extra byte to the high-precision
scheme while the total parameter bytes stay within the budget.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

from tqdm.auto import tqdm

import jaxquant as jq
from jaxquant.errors import JaxquantError
from jaxquant.recipes.recipe import Recipe, Rule
from jaxquant.tree_paths import flatten

Granularity = str  # "type" | "block" | "layer"


@dataclasses.dataclass(frozen=True)
class GroupCost:
    group: str  # a regex over parameter paths selecting the group's kernels
    paths: tuple[str, ...]
    perplexity: float
    delta: float  # perplexity increase over the float model
    low_bytes: int
    high_bytes: int


def group_of(path: str, granularity: Granularity) -> str:
    """The group a kernel belongs to, as a regex matching every member."""
    if granularity == "layer":
        return "^" + re.escape(path) + "$"
    m = re.search(r"layers_(\d+)/", path)
    if granularity == "block":
        return rf"(^|/)layers_{m.group(1)}/" if m else "^" + re.escape(path) + "$"
    if granularity == "type":
        return re.escape(re.sub(r"layers_\d+/", "layers_*/", path)).replace(
            r"layers_\*/", r"layers_\d+/") + "$"
    raise JaxquantError(f"granularity={granularity!r}; use type, block or layer")


def _restricted(recipe: Recipe, pattern: str) -> Recipe:
    """The recipe applied only to parameters matching `pattern` (everything else ignored)."""
    return dataclasses.replace(recipe, ignore=recipe.ignore + (f"re:^(?!.*(?:{pattern}))",))


def _bytes_of(params: Any, paths: tuple[str, ...]) -> int:
    leaves = dict(flatten(params)[0])
    total = 0
    for p in paths:
        leaf = leaves[p]
        total += leaf.nbytes if isinstance(leaf, jq.QArray) else int(leaf.nbytes)
    return total


def sensitivity(
    params: Any,
    low: Recipe,
    high: Recipe,
    evaluate: Callable[[Any], float],
    *,
    granularity: Granularity = "type",
    quantize: Callable[[Any, Recipe], Any] = jq.quantize,
    progress: bool = True,
) -> tuple[float, list[GroupCost]]:
    """(float perplexity, groups ranked by perplexity cost, most sensitive first).

    evaluate(params) -> perplexity on calibration text; quantize(params, recipe) -> qparams."""
    full_low = quantize(params, low)
    full_high = quantize(params, high)
    targeted = [p for p, leaf in flatten(full_low)[0] if isinstance(leaf, jq.QArray)]
    if not targeted:
        raise JaxquantError(f"recipe {low.name!r} targets no parameter of this model")
    groups: dict[str, list[str]] = {}
    for p in targeted:
        groups.setdefault(group_of(p, granularity), []).append(p)
    base = evaluate(params)
    costs = []
    for pattern, paths in tqdm(groups.items(), desc="sensitivity", disable=not progress):
        q = quantize(params, _restricted(low, pattern))
        ppl = evaluate(q)
        costs.append(GroupCost(pattern, tuple(paths), ppl, ppl - base,
                               _bytes_of(full_low, tuple(paths)),
                               _bytes_of(full_high, tuple(paths))))
    return base, sorted(costs, key=lambda c: -c.delta)


def mixed_recipe(low: Recipe, high: Recipe, costs: list[GroupCost], budget_bytes: int,
                 other_bytes: int) -> tuple[Recipe, int, list[str]]:
    """Recipe keeping the most sensitive groups in `high` within `budget_bytes` of total
    parameters (other_bytes: parameters no rule targets). Returns (recipe, bytes, upgraded)."""
    total = other_bytes + sum(c.low_bytes for c in costs)
    if total > budget_bytes:
        raise JaxquantError(
            f"budget {budget_bytes:,} bytes is below the all-low-precision size {total:,}; "
            "raise --budget-bytes / --bits-per-param or choose a smaller format"
        )
    upgraded: list[GroupCost] = []
    by_value = sorted(costs, key=lambda c: -c.delta / max(c.high_bytes - c.low_bytes, 1))
    for c in by_value:
        extra = c.high_bytes - c.low_bytes
        if c.delta > 0 and total + extra <= budget_bytes:
            upgraded.append(c)
            total += extra
    hi_rule = high.rules[0]
    rules = tuple(Rule(("re:" + c.group,), hi_rule.weight, (), hi_rule.activation, "rtn")
                  for c in upgraded) + low.rules
    name = f"mixed-{low.name}-{high.name}"
    return Recipe(rules, ignore=low.ignore, name=name), total, [c.group for c in upgraded]
