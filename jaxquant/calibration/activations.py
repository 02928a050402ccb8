"""Static activation scales: run calibration batches through the quantized model, observe the
inputs of every layer whose scheme has static (dynamic=False) activations, store the scales."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import jax

from jaxquant.calibration.observers import HistogramObserver, static_scale
from jaxquant.core.qarray import QArray
from jaxquant.errors import JaxquantError
from jaxquant.inference import dispatch, intercept
from jaxquant.tree_paths import is_leaf


def calibrate_activations(
    run: Callable[[Any, Any], Any], qparams: Any, batches: Iterable[Any]
) -> Any:
    """run(qparams, batch) calls the model's forward (e.g. lambda p, b: model.apply(p, b)); it is
    executed eagerly (not jitted) so every layer's inputs can be observed. Returns qparams with
    `input_scale` set on each QArray whose activation scheme is static, from a histogram of its
    inputs and the scheme's clipping (min-max, percentile or MSE)."""
    states: dict[int, Any] = {}
    n = 0
    with jax.disable_jit(), intercept(), dispatch.observing(states):
        for batch in batches:
            run(qparams, batch)
            n += 1
    if n == 0:
        raise JaxquantError("calibrate_activations: `batches` is empty; give at least one batch")

    def attach(leaf: Any) -> Any:
        if not isinstance(leaf, QArray) or leaf.meta.activation is None:
            return leaf
        spec = leaf.meta.activation
        if spec.dynamic:
            return leaf
        state = states.get(id(leaf))
        if state is None:
            raise JaxquantError(
                f"a {leaf.format} weight of shape {leaf.shape} with static activations was "
                "never called during calibration; check the model's forward uses it"
            )
        amax = HistogramObserver.amax(state, spec.clipping, spec.format)
        return dataclasses.replace(leaf, input_scale=static_scale(amax, spec.format))

    return jax.tree_util.tree_map(attach, qparams, is_leaf=is_leaf)
