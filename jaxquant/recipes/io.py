"""Recipes to and from plain dicts, YAML and JSON files, with strict key checking.

File layout:
    name: my-recipe
    ignore: ["re:lm_head"]              # optional; default: jaxquant.recipes.DEFAULT_IGNORE
    kv_cache: int8                      # optional: bf16|int8|fp8|int4, or {format, group_size}
    rules:
      - targets: ["re:(^|/)kernel$"]
        ignore: ["re:layers_0/"]         # optional
        scheme: w4a16                    # a preset's scheme, or the two keys below
        weight: {format: int4, group_size: 128, scale_dtype: bfloat16,
                 clipping: {method: mse}}
        activation: {format: int8, granularity: token, dynamic: true}
        method: rtn
        method_args: {}
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import yaml

from jaxquant.core.spec import ActivationSpec, Clipping
from jaxquant.errors import RecipeError
from jaxquant.kernels.decode_attention.layouts import KVCacheSpec
from jaxquant.recipes.presets import get_preset, preset_names
from jaxquant.recipes.recipe import DEFAULT_IGNORE, Recipe, Rule
from jaxquant.recipes.schemes import WeightScheme, activation_scheme

_RECIPE_KEYS = {"name", "ignore", "rules", "kv_cache"}
_RULE_KEYS = {"targets", "ignore", "scheme", "weight", "activation", "method", "method_args"}


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _check_keys(d: Any, allowed: set[str], where: str) -> dict:
    if not isinstance(d, dict):
        raise RecipeError(f"{where}: expected a mapping, got {type(d).__name__}")
    unknown = set(d) - allowed
    if unknown:
        raise RecipeError(
            f"{where}: unknown key(s) {sorted(unknown)}; allowed keys: {sorted(allowed)}"
        )
    return d


def _clipping(d: Any, where: str) -> Clipping:
    return Clipping(**_check_keys(d, _field_names(Clipping), where))


def _weight(d: Any, where: str) -> WeightScheme:
    d = dict(_check_keys(d, _field_names(WeightScheme), where))
    if "format" not in d:
        raise RecipeError(f"{where}: missing 'format'")
    if "clipping" in d:
        d["clipping"] = _clipping(d["clipping"], f"{where}.clipping")
    for key in ("block", "channel_axes"):
        if d.get(key) is not None:
            d[key] = tuple(d[key])
    return WeightScheme(**d)


def _activation(d: Any, where: str) -> ActivationSpec | None:
    if d is None:
        return None
    d = dict(_check_keys(d, _field_names(ActivationSpec), where))
    if "clipping" in d:
        d["clipping"] = _clipping(d["clipping"], f"{where}.clipping")
    if "format" not in d:
        raise RecipeError(f"{where}: missing 'format'")
    return activation_scheme(**d)


def _kv_cache(d: Any) -> KVCacheSpec | None:
    if d is None or isinstance(d, str):
        return None if d is None else KVCacheSpec(d)
    return KVCacheSpec(**_check_keys(d, _field_names(KVCacheSpec), "recipe.kv_cache"))


def rule_from_dict(d: Any, where: str = "rule") -> Rule:
    d = _check_keys(d, _RULE_KEYS, where)
    if "targets" not in d:
        raise RecipeError(f"{where}: missing 'targets'")
    if "scheme" in d:
        if "weight" in d:
            raise RecipeError(f"{where}: give either 'scheme' or 'weight', not both")
        base = get_preset(d["scheme"]).rules[0]
        weight, activation = base.weight, base.activation
        if "activation" in d:
            activation = _activation(d["activation"], f"{where}.activation")
    elif "weight" in d:
        weight = _weight(d["weight"], f"{where}.weight")
        activation = _activation(d.get("activation"), f"{where}.activation")
    else:
        raise RecipeError(f"{where}: needs 'weight' (or 'scheme': one of {preset_names()})")
    targets = d["targets"]
    targets = [targets] if isinstance(targets, str) else targets
    return Rule(
        targets=tuple(targets),
        weight=weight,
        ignore=tuple(d.get("ignore", ())),
        activation=activation,
        method=d.get("method", "rtn"),
        method_args=dict(d.get("method_args") or {}),
    )


def recipe_from_dict(d: Any) -> Recipe:
    d = _check_keys(d, _RECIPE_KEYS, "recipe")
    rules = d.get("rules")
    if not isinstance(rules, list) or not rules:
        raise RecipeError("recipe: 'rules' must be a non-empty list")
    return Recipe(
        rules=tuple(rule_from_dict(r, f"rules[{i}]") for i, r in enumerate(rules)),
        ignore=tuple(d.get("ignore", DEFAULT_IGNORE)),
        name=d.get("name", "custom"),
        kv_cache=_kv_cache(d.get("kv_cache")),
    )


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def recipe_to_dict(recipe: Recipe) -> dict:
    d = {"name": recipe.name, "ignore": list(recipe.ignore), "rules": _plain(recipe.rules)}
    if recipe.kv_cache is not None:
        d["kv_cache"] = _plain(recipe.kv_cache)
    return d


def save_recipe(recipe: Recipe, path: str | os.PathLike) -> None:
    """Write a recipe as YAML (.yaml/.yml) or JSON (.json)."""
    path = Path(path)
    d = recipe_to_dict(recipe)
    if path.suffix in (".yaml", ".yml"):
        path.write_text(yaml.safe_dump(d, sort_keys=False))
    elif path.suffix == ".json":
        path.write_text(json.dumps(d, indent=2))
    else:
        raise RecipeError(f"recipe path {str(path)!r}: use a .yaml, .yml or .json extension")


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read a YAML or JSON recipe file (safe loaders only)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        d = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise RecipeError(f"recipe file {str(path)!r} is not valid YAML/JSON: {e}") from None
    return recipe_from_dict(d)


def resolve_recipe(recipe: Recipe | str | os.PathLike) -> Recipe:
    """A Recipe, a preset name, or a path to a recipe file -> Recipe."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, (str, os.PathLike)):
        s = str(recipe)
        if s.lower() in preset_names():
            return get_preset(s)
        if Path(s).suffix in (".yaml", ".yml", ".json") or Path(s).exists():
            return load_recipe(s)
        return get_preset(s)  # raises with the list of presets
    raise RecipeError(
        f"recipe must be a Recipe, a preset name or a file path, not {type(recipe).__name__}"
    )
