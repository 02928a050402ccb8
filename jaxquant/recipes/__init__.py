"""Recipes: rules, schemes, presets and recipe files."""

from jaxquant.recipes.io import load_recipe, recipe_from_dict, recipe_to_dict, resolve_recipe, save_recipe
from jaxquant.recipes.presets import get_preset, preset_names
from jaxquant.recipes.recipe import DEFAULT_IGNORE, DEFAULT_TARGETS, Recipe, Rule
from jaxquant.recipes.schemes import WeightScheme, activation_scheme

__all__ = [
    "DEFAULT_IGNORE",
    "DEFAULT_TARGETS",
    "Recipe",
    "Rule",
    "WeightScheme",
    "activation_scheme",
    "get_preset",
    "load_recipe",
    "preset_names",
    "recipe_from_dict",
    "recipe_to_dict",
    "resolve_recipe",
    "save_recipe",
]
