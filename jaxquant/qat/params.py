"""QAT parameter trees: a recipe turns the targeted float leaves into QATWeight nodes.

    qat = prepare_qat(params, "w4a16", learn_scales=True)   # trainable pytree (optax-ready)
    float_params = materialize(qat)                           # fake-quantized weights (STE)
    qparams = convert(qat)                                    # real QArrays, same values

`convert(qat)` dequantizes to exactly `materialize(qat)` (bit for bit, every format), so the
converted model runs the same weights the training forward ran.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from jaxquant.core.qarray import QArray
from jaxquant.core.quantize import quantize_array, quantize_with_scales
from jaxquant.core.scales import Scales
from jaxquant.core.spec import ActivationSpec, ArraySpec
from jaxquant.errors import LeafError, RecipeError
from jaxquant.module_types import owner_type
from jaxquant.qat.lsq import check_learnable, lsq_weight, stored_scale
from jaxquant.qat.ste import fake_quant_ste
from jaxquant.recipes.io import resolve_recipe
from jaxquant.recipes.recipe import Recipe
from jaxquant.transform import default_axis, quantize_leaf
from jaxquant.tree_paths import flatten, path_str


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QATWeight:
    """One quantization-aware weight.

    weight:     the float master weight (shape S), trained.
    log_scale:  f32 log block scales (grid shape G) when scales are learned (LSQ), else None
                (scales recomputed from the weight at every step, as RTN does).
    zero_point: f32 integer-valued zero-points (grid shape) of asymmetric formats with learned
                scales, frozen at their round-to-nearest values (they receive zero gradient).
    spec, activation: the resolved weight scheme and the layer's activation scheme (static).
    """

    weight: Array
    log_scale: Array | None
    zero_point: Array | None
    spec: ArraySpec = dataclasses.field(metadata=dict(static=True))
    activation: ActivationSpec | None = dataclasses.field(default=None, metadata=dict(static=True))

    def fake(self) -> Array:
        """The fake-quantized weight (shape S, the weight's dtype) with straight-through grads."""
        if self.log_scale is None:
            return fake_quant_ste(self.weight, self.spec)
        return lsq_weight(self.weight, self.log_scale, self.zero_point, self.spec)

    def to_qarray(self) -> QArray:
        """The real quantized weight whose dequantize() equals fake() bit for bit."""
        if self.log_scale is None:
            q = quantize_array(self.weight, self.spec)
        else:
            s = stored_scale(self.log_scale, self.spec)
            zp = None if self.zero_point is None else self.zero_point.astype(jnp.uint8)
            q = quantize_with_scales(self.weight, self.spec, Scales(s, zp, s.astype(jnp.float32)))
        if self.activation is None:
            return q
        return dataclasses.replace(q, meta=dataclasses.replace(q.meta, activation=self.activation))


def is_qat_weight(x: Any) -> bool:
    return isinstance(x, QATWeight)


def _leaf(path: str, leaf: Any, rule: Any, learn_scales: bool) -> QATWeight:
    q = quantize_leaf(path, leaf, rule)  # validates the leaf (float, finite, not a QArray)
    spec = rule.weight.resolve(tuple(leaf.shape), default_axis(path, leaf.ndim), path)
    act = rule.activation
    if act is not None and not act.dynamic:
        raise RecipeError(
            f"{path}: QAT fake-quantizes activations with dynamic scales; this rule has static "
            f"{act.format} activation scales. Train with dynamic=True, then calibrate static "
            "scales on the converted model (jaxquant.calibration.activations)"
        )
    if not learn_scales:
        return QATWeight(jnp.asarray(leaf), None, None, spec, act)
    check_learnable(spec, path)
    log_s = jnp.log(q.block_scale())
    zp = None if q.zero_point is None else q.zero_point.astype(jnp.float32)
    return QATWeight(jnp.asarray(leaf), log_s, zp, spec, act)


def prepare_qat(params: Any, recipe: Recipe | str | os.PathLike, *, learn_scales: bool = False,
                module_types: dict[str, str] | None = None) -> Any:
    """Float parameter tree -> the same tree with every leaf the recipe targets as a QATWeight
    (initialized at round to nearest: materialize() of the result is the RTN model).

    Errors: an already quantized leaf (LeafError: QAT trains float weights), NaN/Inf or integer
    leaves (LeafError), calibrated methods (RecipeError: QAT starts from round to nearest),
    learn_scales on formats whose scales are not a float per block (FormatError), static
    activation scales (RecipeError).
    """
    recipe = resolve_recipe(recipe)
    items, treedef = flatten(params)
    out, n = [], 0
    for path, leaf in items:
        if isinstance(leaf, QATWeight):
            raise RecipeError(f"{path} is already prepared for QAT; pass the float parameters")
        if isinstance(leaf, QArray):
            raise LeafError(
                f"{path} is already quantized ({leaf.format}); QAT trains float weights: start "
                "from the float model, or jaxquant.dequantize the tree first"
            )
        found = recipe.rule_for(path, owner_type(module_types, path))
        if found is None:
            out.append(leaf)
            continue
        rule = found[1]
        if rule.method != "rtn":
            raise RecipeError(
                f"{path}: QAT starts from round to nearest; rule method {rule.method!r} "
                "(calibrated PTQ) does not apply. Use method 'rtn' in the QAT recipe"
            )
        out.append(_leaf(path, leaf, rule, learn_scales))
        n += 1
    if n == 0:
        raise RecipeError(f"recipe {recipe.name!r} targets no parameter of this tree; check its "
                          "targets against the parameter paths (jaxquant.summary)")
    return jax.tree_util.tree_unflatten(treedef, out)


def materialize(qat: Any) -> Any:
    """QAT tree -> float tree with every QATWeight replaced by its fake-quantized weight."""
    return jax.tree_util.tree_map(lambda x: x.fake() if is_qat_weight(x) else x, qat,
                                  is_leaf=is_qat_weight)


_to_qarray = jax.jit(QATWeight.to_qarray)


def convert(qat: Any) -> Any:
    """QAT tree -> inference tree with every QATWeight replaced by a real QArray."""
    return jax.tree_util.tree_map(lambda x: _to_qarray(x) if is_qat_weight(x) else x, qat,
                                  is_leaf=is_qat_weight)


def activation_specs(qat: Any) -> dict[str, ActivationSpec]:
    """Layer path ('layers_0/mlp/up_proj', no 'params/' prefix nor leaf name) -> activation
    scheme, for the QATWeights that quantize their layer's inputs."""
    found = {}
    for keys, leaf in jax.tree_util.tree_flatten_with_path(qat, is_leaf=is_qat_weight)[0]:
        if is_qat_weight(leaf) and leaf.activation is not None:
            parts = path_str(keys).split("/")
            found["/".join(parts[1:-1] if parts[0] == "params" else parts[:-1])] = leaf.activation
    return found
