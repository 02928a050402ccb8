"""quantize on sharded parameters: one jit with in/out shardings, nothing gathered.

    specs = llama_tp_specs(params, mesh)                      # or any tree of PartitionSpec
    qparams = quantize_sharded(params, "w4a16", mesh, specs)  # QArrays sharded like params

Every block of a QArray depends only on the float elements of that block, so with the layouts
jaxquant.sharding.specs accepts (no group split across devices) XLA computes each device's codes
and scales from its own shard; per-channel scales over a split axis need one all-reduce (max).
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxquant.errors import LeafError
from jaxquant.recipes.io import resolve_recipe
from jaxquant.recipes.recipe import Recipe
from jaxquant.sharding.specs import named_shardings, tree_specs
from jaxquant.transform import quantize
from jaxquant.tree_paths import flatten


def check_finite(params: Any, shardings: Any) -> None:
    """LeafError naming the first float leaf holding NaN/Inf, checked where each shard lives
    (one boolean per leaf comes back to the host)."""
    items, _ = flatten(params)
    floats = [(p, x) for p, x in items if hasattr(x, "dtype") and jnp.issubdtype(x.dtype,
                                                                                 jnp.floating)]
    if not floats:
        return
    flat_sh = dict(flatten(shardings)[0])
    fn = jax.jit(lambda xs: [jnp.isfinite(x).all() for x in xs],
                 in_shardings=([flat_sh[p] for p, _ in floats],))
    for (path, _), ok in zip(floats, fn([x for _, x in floats])):
        if not bool(ok):
            raise LeafError(f"{path} contains NaN or Inf; fix the weights before quantizing")


def quantize_sharded(params: Any, recipe: Recipe | str | os.PathLike, mesh: Mesh,
                     float_specs: Any, *, module_types: dict[str, str] | None = None,
                     return_compiled: bool = False) -> Any:
    """jaxquant.quantize under jax.jit with the float parameters sharded by `float_specs` (a tree
    of PartitionSpec like `params`, or {path: PartitionSpec}) and every QArray field sharded as
    jaxquant.sharding.specs derives. Parameters not yet placed are put on the mesh shard by
    shard. Layouts that would split a group or packed byte raise ShardingError before any work.
    return_compiled=True returns (qparams, compiled) for memory analysis."""
    recipe = resolve_recipe(recipe)
    run = functools.partial(quantize, recipe=recipe, module_types=module_types)
    in_specs = tree_specs(params, float_specs, mesh)
    in_sh = named_shardings(in_specs, mesh)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unused-rule warnings come once, from the real call
        abstract = jax.eval_shape(run, params)
    out_sh = named_shardings(tree_specs(abstract, float_specs, mesh), mesh)
    params = jax.device_put(params, in_sh)
    check_finite(params, in_sh)
    fn = jax.jit(run, in_shardings=(in_sh,), out_shardings=out_sh)
    compiled = fn.lower(params).compile()
    qparams = compiled(params)
    return (qparams, compiled) if return_compiled else qparams
