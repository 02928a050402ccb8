"""quantize / dequantize: pure functions over Flax parameter trees (Linen dicts, NNX State)."""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxquant.core.qarray import QArray
from jaxquant.core.quantize import quantize_array
from jaxquant.errors import LeafError, RecipeError
from jaxquant.module_types import owner_type
from jaxquant.recipes.io import resolve_recipe
from jaxquant.recipes.recipe import Recipe, Rule
from jaxquant.tree_paths import flatten, is_leaf


def default_axis(path: str, ndim: int) -> int:
    """Contraction axis of a parameter: last for embedding tables ((vocab, d): lookups and a tied
    head both reduce over d), first otherwise (Flax kernels are (in, ..., out))."""
    return ndim - 1 if path.rsplit("/", 1)[-1] == "embedding" else 0


def _check_leaf(path: str, leaf: Any) -> None:
    if isinstance(leaf, QArray):
        raise LeafError(
            f"{path} is already quantized ({leaf.format}); dequantize it first or add it to "
            "the recipe's ignore list"
        )
    if not hasattr(leaf, "dtype") or not hasattr(leaf, "shape"):
        raise LeafError(f"{path} is a {type(leaf).__name__}, not an array; add it to ignore")
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
        raise LeafError(
            f"{path} has dtype {leaf.dtype}; only floating-point leaves can be quantized. "
            "Add it to the rule's ignore list"
        )
    if not isinstance(leaf, jax.core.Tracer):
        finite = np.asarray(jnp.isfinite(leaf))
        if not finite.all():
            bad = np.argwhere(~finite)[0]
            raise LeafError(
                f"{path} contains NaN or Inf (first at index {tuple(int(i) for i in bad)}, "
                f"{int((~finite).sum())} values); fix the weights before quantizing"
            )


def attach_activation(q: QArray, rule: Rule) -> QArray:
    """Record the rule's activation scheme (None: weight-only) in the QArray's metadata."""
    if rule.activation is None:
        return q
    return dataclasses.replace(q, meta=dataclasses.replace(q.meta, activation=rule.activation))


def quantize_leaf(path: str, leaf: Any, rule: Rule) -> QArray:
    """Quantize one parameter under a rule by round to nearest."""
    _check_leaf(path, leaf)
    spec = rule.weight.resolve(tuple(leaf.shape), default_axis(path, leaf.ndim), path)
    return attach_activation(quantize_array(jnp.asarray(leaf), spec), rule)


def quantize(
    params: Any,
    recipe: Recipe | str | os.PathLike,
    *,
    module_types: dict[str, str] | None = None,
) -> Any:
    """Quantize a parameter tree: each leaf that a rule targets becomes a QArray.

    params:       a Flax Linen params dict, an NNX State, or any pytree of arrays.
    recipe:       a Recipe, a preset name ("w4a16", ...), or a YAML/JSON recipe file path.
    module_types: optional parameter-owner class names (jaxquant.linen_module_types /
                  nnx_module_types) so rules can target classes such as "Dense".
    Returns the same tree structure. Pure; runs under jax.jit (the NaN/Inf check is skipped for
    traced values). Rules that match nothing raise a warning listing them.
    """
    recipe = resolve_recipe(recipe)
    items, treedef = flatten(params)
    used: set[int] = set()
    out = []
    for path, leaf in items:
        found = recipe.rule_for(path, owner_type(module_types, path))
        if found is None:
            out.append(leaf)
            continue
        idx, rule = found
        if rule.method != "rtn":
            raise RecipeError(
                f"{path}: method {rule.method!r} needs calibration data; use "
                "jaxquant.methods.sequential.quantize_calibrated (or `jaxquant quantize`)"
            )
        used.add(idx)
        out.append(quantize_leaf(path, leaf, rule))
    unused = [f"rules[{i}] targets={list(r.targets)}" for i, r in enumerate(recipe.rules)
              if i not in used]
    if unused:
        warnings.warn(
            f"recipe {recipe.name!r}: rule(s) matched no parameter: {'; '.join(unused)}",
            stacklevel=2,
        )
    return jax.tree_util.tree_unflatten(treedef, out)


def dequantize(qparams: Any, dtype: Any = None) -> Any:
    """Replace every QArray leaf by its dequantized array (logical shape; meta dtype or `dtype`)."""
    return jax.tree_util.tree_map(
        lambda x: x.dequantize(dtype) if isinstance(x, QArray) else x, qparams, is_leaf=is_leaf
    )
