"""SmoothQuant (Xiao et al., 2023): migrate activation outliers into the weights, as pure array
functions.

Layout: activations X [T, K], weights in Flax layout W_i [K, N_i] (inputs on axis 0); all W_i
read the same X and share one s [K]. With a_j = max_t |X[t, j]| (calibrated per channel) and
w_j = max_{i, n} |W_i[j, n]|:

    s_j = a_j ** alpha / w_j ** (1 - alpha),     0 <= alpha <= 1   (0.5 by default)

clamped to >= 1e-5, and s_j = 1 where a_j or w_j is 0 (or s_j is not finite). Then
(X / s) (s W) = X W exactly in real arithmetic, while X / s has its outlier channels divided
down (easier per-token INT8) and s W absorbs them (per-channel INT8 weights have room to spare).
alpha = 0 leaves the activations alone up to 1 / w; alpha = 1 moves all of their range into W.

smooth() returns the scaled weights W_i * s[:, None] and s; fold 1 / s into whatever produces X
with jaxquant.methods.awq_core.fold_into_norm / fold_into_linear_outputs, or store it as
QArray.input_smooth where nothing precedes X.

alpha_search() picks alpha per group of layers (recipe `alpha: "auto"`): for alpha in
{0, 1/grid, ..., 1} it measures the W8A8 output error on a sample of the activations,

    err(alpha) = sum_i || X W_i - Qa(X / s) Qw(W_i * s[:, None]) ||_F^2,   s = s(alpha)

with Qa the rule's activation quantizer (dynamic per token or per tensor) and Qw its weight
quantizer, and returns the argmin (ties: the smaller alpha), as AWQ's search does for weights.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import Array

from jaxquant.core.activations import quantize_activation
from jaxquant.core.quantize import fake_quantize
from jaxquant.core.spec import ActivationSpec, ArraySpec
from jaxquant.errors import JaxquantError
from jaxquant.methods.awq_core import (
    GRID_BATCH,
    check_spec,
    check_weights,
    fold_into_linear_outputs,
    fold_into_norm,
    scale_weights,
)

__all__ = [
    "SmoothResult",
    "AlphaSearchResult",
    "smoothing_scales",
    "smooth",
    "alpha_search",
    "fold_into_norm",
    "fold_into_linear_outputs",
    "scale_weights",
]

MIN_SCALE = 1e-5


class SmoothResult(NamedTuple):
    """Output of smooth(): weights W_i * s[:, None] (each in W_i's dtype) and s f32 [K]."""

    weights: list[Array]
    scales: Array


def check_alpha(fn: str, alpha) -> None:
    """JaxquantError unless alpha is in [0, 1] (traced values are not checked)."""
    try:
        a = float(alpha)
    except (TypeError, jax.errors.ConcretizationTypeError):
        if getattr(alpha, "shape", ()) != ():
            raise JaxquantError(f"{fn}: alpha has shape {alpha.shape}; pass a scalar in [0, 1]")
        return
    if not 0.0 <= a <= 1.0:
        raise JaxquantError(f"{fn}: alpha={alpha!r} is outside [0, 1]; pass the migration "
                            "strength in [0, 1] (0.5 is SmoothQuant's default, 0.75-0.85 for "
                            "models with strong outliers)")


@jax.jit
def _scales(act_absmax: Array, weights: tuple[Array, ...], alpha: Array) -> Array:
    a = jnp.abs(act_absmax.astype(jnp.float32))
    w = functools.reduce(jnp.maximum, [jnp.max(jnp.abs(wi.astype(jnp.float32)), axis=1)
                                       for wi in weights])
    s = jnp.power(a, alpha) / jnp.power(w, 1.0 - alpha)
    ok = (a > 0) & (w > 0) & jnp.isfinite(s)
    return jnp.where(ok, jnp.maximum(s, MIN_SCALE), 1.0)


def smoothing_scales(act_absmax: Array, weights: Sequence[Array], alpha: float = 0.5) -> Array:
    """SmoothQuant's per-input-channel scales s f32 [K].

    act_absmax: [K] per-channel max |x| over the calibration tokens.
    weights:    list of [K, N_i] float weights that read x (Flax layout).
    alpha:      migration strength in [0, 1].
    Jittable (alpha may be traced; it is range-checked only when concrete).
    """
    fn = "smoothing_scales"
    check_alpha(fn, alpha)
    shape = tuple(getattr(act_absmax, "shape", ()))
    if len(shape) != 1:
        raise JaxquantError(f"{fn}: act_absmax has shape {shape}; expected [K] (max |x| per "
                            "input channel, e.g. jnp.max(jnp.abs(x.reshape(-1, K)), axis=0))")
    weights = check_weights(fn, weights, shape[0], f"act_absmax {shape}")
    return _scales(act_absmax, weights, jnp.asarray(alpha, jnp.float32))


def smooth(x_absmax: Array, weights: Sequence[Array], alpha: float = 0.5) -> SmoothResult:
    """Smoothed weights and scales: SmoothResult([W_i * s[:, None]], s).

    x_absmax: [K] per-channel max |x|; weights: list of [K, N_i]; alpha in [0, 1]. The layers
    then read x / s: fold 1 / s into the producer of x (fold_into_norm, fold_into_linear_outputs)
    or set QArray.input_smooth = s.
    """
    s = smoothing_scales(x_absmax, weights, alpha)
    return SmoothResult([scale_weights(w, s) for w in weights], s)


class AlphaSearchResult(NamedTuple):
    """Output of alpha_search (a pytree): scales f32 [K] at the chosen alpha (f32 scalar), and
    errors f32 [grid + 1], err(alpha) at alpha = i / grid."""

    scales: Array
    alpha: Array
    errors: Array


@functools.partial(jax.jit, static_argnames=("wspecs", "aspec", "grid"))
def _alpha_search(x, act_absmax, weights, wspecs, aspec, grid):
    x32 = x.astype(jnp.float32)
    w32 = tuple(w.astype(jnp.float32) for w in weights)
    ref = tuple(jnp.dot(x32, w, precision=jax.lax.Precision.HIGHEST) for w in w32)
    alphas = jnp.arange(grid + 1, dtype=jnp.float32) / grid

    def error_at(alpha):
        s = _scales(act_absmax, weights, alpha)
        xq, sx = quantize_activation(x32 / s[None, :], aspec, (1,))
        x_hat = xq.astype(jnp.float32) * sx
        err = 0.0
        for w, sp, y in zip(w32, wspecs, ref):
            y_hat = jnp.dot(x_hat, fake_quantize(w * s[:, None], sp),
                            precision=jax.lax.Precision.HIGHEST)
            err = err + jnp.sum((y - y_hat) ** 2)
        return err

    errors = jax.lax.map(error_at, alphas, batch_size=GRID_BATCH)
    best = jnp.argmin(jnp.where(jnp.isnan(errors), jnp.inf, errors))
    return AlphaSearchResult(_scales(act_absmax, weights, alphas[best]), alphas[best], errors)


def alpha_search(x: Array, act_absmax: Array, weights: Sequence[Array],
                 weight_specs: ArraySpec | Sequence[ArraySpec], act_spec: ActivationSpec,
                 *, grid: int = 10) -> AlphaSearchResult:
    """SmoothQuant scales at the alpha in {0, 1/grid, ..., 1} with the least W8A8 output error
    (see the module docstring) of the layers `weights` that all read x.

    x:            [T, K] float activation sample (T of a few hundred rows is enough).
    act_absmax:   [K] per-channel max |x| over all calibration tokens (what s is built from).
    weights:      list of [K, N_i] float weights (Flax layout).
    weight_specs: the weights' ArraySpecs (one for all, or one per weight).
    act_spec:     the activation scheme of the W8A8 dot (a static scheme is scored with a
                  per-tensor scale of the sample).
    grid:         alphas i / grid for i in 0..grid.
    Returns AlphaSearchResult(scales f32 [K], alpha f32, errors f32 [grid + 1]).
    """
    fn = "alpha_search"
    shape = tuple(getattr(x, "shape", ()))
    if len(shape) != 2 or shape[0] == 0:
        raise JaxquantError(f"{fn}: x has shape {shape}; expected a non-empty activation "
                            "sample [T, K] (x.reshape(-1, K))")
    k = shape[1]
    if tuple(getattr(act_absmax, "shape", ())) != (k,):
        raise JaxquantError(f"{fn}: act_absmax has shape {tuple(getattr(act_absmax, 'shape', ()))}"
                            f"; expected [{k}] to match x {shape}")
    weights = check_weights(fn, weights, k, f"x {shape}")
    specs = (tuple(weight_specs) if isinstance(weight_specs, (list, tuple))
             else (weight_specs,) * len(weights))
    if len(specs) != len(weights):
        raise JaxquantError(f"{fn}: {len(specs)} weight specs for {len(weights)} weights")
    for i, (w, sp) in enumerate(zip(weights, specs)):
        check_spec(fn, f"weights[{i}]", sp, tuple(w.shape))
    if not isinstance(act_spec, ActivationSpec):
        raise JaxquantError(f"{fn}: act_spec is {type(act_spec).__name__}; pass the rule's "
                            "ActivationSpec, e.g. jaxquant.activation_scheme('int8')")
    if not isinstance(grid, int) or isinstance(grid, bool) or grid < 1:
        raise JaxquantError(f"{fn}: grid={grid!r}; pass a positive int (10: alpha steps of 0.1)")
    return _alpha_search(jnp.asarray(x), jnp.asarray(act_absmax, jnp.float32), weights, specs,
                         act_spec, grid)
