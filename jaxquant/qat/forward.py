"""The QAT forward of a Flax Linen model: fake-quantized weights and activations.

    logits = qat_apply(model, qat_params, tokens)      # differentiable, jit-able

Weights: every QATWeight becomes its fake-quantized value (jaxquant.qat.params.materialize),
so the model runs unchanged on float arrays. Activations: the layers whose rule has an
activation scheme are intercepted (`nn.intercept_methods`, as jaxquant.intercept() does for
inference) and their inputs go through the straight-through activation quantizer first. NNX
models: `nnx.merge(graphdef, materialize(qat_state))` gives the weight-only QAT model.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

from flax import linen as nn

from jaxquant.core.spec import ActivationSpec
from jaxquant.errors import JaxquantError
from jaxquant.inference.einsum_dims import einsum_dimension_numbers
from jaxquant.qat.params import activation_specs, materialize, prepare_qat
from jaxquant.qat.ste import fake_quant_activation
from jaxquant.recipes.recipe import Recipe


def _contracting(module: nn.Module, x: Any) -> tuple[int, ...]:
    """The axes of x a Dense / DenseGeneral / Einsum layer contracts."""
    if isinstance(module, nn.Dense):
        return (x.ndim - 1,)
    if isinstance(module, nn.DenseGeneral):
        axis = module.axis if isinstance(module.axis, tuple) else (module.axis,)
        return tuple(a % x.ndim for a in axis)
    kernel = module.scope.get_variable("params", "kernel")
    dims, _ = einsum_dimension_numbers(module.einsum_str, x.ndim, kernel.ndim)
    return tuple(dims[0][0])


def activation_interceptor(specs: dict[str, ActivationSpec]):
    """nn.intercept_methods hook quantizing the inputs of the layers named in `specs`."""

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        spec = specs.get("/".join(module.path))
        if spec is None or context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        if not isinstance(module, (nn.Dense, nn.DenseGeneral, nn.Einsum)):
            raise JaxquantError(f"{'/'.join(module.path)}: activation quantization applies to "
                                "Dense, DenseGeneral and Einsum layers, not "
                                f"{type(module).__name__}")
        x, *rest = args
        return next_fun(fake_quant_activation(x, spec, _contracting(module, x)), *rest, **kwargs)

    return interceptor


def qat_apply(module: nn.Module, qat_params: Any, *args: Any, **kwargs: Any) -> Any:
    """module.apply(...) with the QAT tree's weights and activations fake-quantized."""
    specs = activation_specs(qat_params)
    params = materialize(qat_params)
    if not specs:
        return module.apply(params, *args, **kwargs)
    with nn.intercept_methods(activation_interceptor(specs)):
        return module.apply(params, *args, **kwargs)


def qat_forward(module: nn.Module, params: Any, recipe: Recipe | str | os.PathLike, *,
                learn_scales: bool = False, module_types: dict[str, str] | None = None
                ) -> tuple[Callable[..., Any], Any]:
    """One call from a Linen model + recipe to QAT: (apply_fn, qat_params) where
    apply_fn(qat_params, *args) is the differentiable fake-quant forward and qat_params (see
    prepare_qat) is the trainable tree, initialized at round to nearest."""
    qat = prepare_qat(params, recipe, learn_scales=learn_scales, module_types=module_types)
    return functools.partial(qat_apply, module), qat
