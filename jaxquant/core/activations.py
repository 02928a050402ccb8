"""Activation quantization for W8A8 dots: dynamic per-token / per-tensor, or static scales."""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

from jaxquant.core.spec import ActivationSpec
from jaxquant.formats.integer import IntCodec
from jaxquant.formats.registry import get_format


def activation_values_dtype(spec: ActivationSpec) -> jnp.dtype:
    """dtype of quantized activation values fed to the dot: int8 for integer formats (INT4 values
    ride in int8), the float8 dtype for FP8."""
    codec = get_format(spec.format).codec
    return jnp.dtype(jnp.int8) if isinstance(codec, IntCodec) else codec.storage_dtype


def activation_scale(x: Array, spec: ActivationSpec, contracting: tuple[int, ...]) -> Array:
    """Dynamic f32 scale of x: per token (amax over the contracting axes, kept as size-1 dims)
    or per tensor (shape (1,) * ndim). Zero rows get scale 1."""
    axes = contracting if spec.granularity == "token" else tuple(range(x.ndim))
    amax = jnp.max(jnp.abs(x.astype(jnp.float32)), axis=axes, keepdims=True)
    s = amax / get_format(spec.format).codec.qmax
    return jnp.where((s > 0) & jnp.isfinite(s), s, 1.0)


def quantize_activation(
    x: Array, spec: ActivationSpec, contracting: tuple[int, ...], static_scale: Array | None = None
) -> tuple[Array, Array]:
    """x [any float] -> (values in activation_values_dtype(spec), f32 scale broadcastable to x).

    Static scales (calibrated, from the weight's QArray.input_scale) are used when given and the
    spec is not dynamic.
    """
    fmt = get_format(spec.format)
    if static_scale is not None and not spec.dynamic:
        s = jnp.asarray(static_scale, jnp.float32).reshape((1,) * x.ndim)
    else:
        s = activation_scale(x, spec, contracting)
    y = x.astype(jnp.float32) / s
    codec = fmt.codec
    if isinstance(codec, IntCodec):
        vals = codec.round_clip(y).astype(jnp.int8)
    else:
        vals = codec.encode(y)
    return vals, s
