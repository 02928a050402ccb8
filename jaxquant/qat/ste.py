"""Fake quantization with straight-through gradients (jax.custom_vjp).

Forward: exactly the real format's round trip: `jaxquant.core.quantize.fake_quantize` for
weights (every format and granularity a WeightScheme resolves to), the W8A8 activation quantizer
(`jaxquant.core.activations.quantize_activation`) for activations. Backward: the upstream
gradient where the value lies inside its block's clipping range, zero outside (the scales are
treated as constants; see jaxquant.qat.lsq for learnable scales).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import Array

from jaxquant.core import blocks
from jaxquant.core.activations import quantize_activation
from jaxquant.core.qarray import QArray
from jaxquant.core.quantize import quantize_array
from jaxquant.core.spec import ActivationSpec, ArraySpec
from jaxquant.formats.integer import IntCodec
from jaxquant.formats.registry import QuantFormat, get_format

# x / scale of a block's own absmax can land an ulp above qmax (the f32 scale amax / qmax is
# rounded): such values count as inside, so the largest element of every block keeps its gradient
RANGE_TOLERANCE = 2.0**-20


def _inside(y: Array, lo: float, hi: float) -> Array:
    tol = 1.0 + RANGE_TOLERANCE
    return (y >= lo * tol) & (y <= hi * tol)


def code_range(fmt: QuantFormat) -> tuple[float, float]:
    """(lo, hi) of the values x / scale (+ zero-point) that a format represents without
    clipping: [0, 2^b - 1] for asymmetric integers, [-qmax, qmax] otherwise (NF4: [-1, 1]).
    Full-range integers: [-2^(b-1), 2^(b-1) - 0.5] ([-8, 7.5] for int4_full), the codes plus
    the point +amax maps onto, so every element of a min-max block keeps its gradient."""
    if fmt.asymmetric:
        return 0.0, float(fmt.codec.levels)
    if isinstance(fmt.codec, IntCodec):
        return fmt.codec.code_bounds[0], float(fmt.codec.qmax)
    return -float(fmt.codec.qmax), float(fmt.codec.qmax)


def clip_mask(x: Array, q: QArray) -> Array:
    """bool, x's shape: True where x (quantized as q) lies inside its block's clipping range
    (up to RANGE_TOLERANCE relative)."""
    lo, hi = code_range(get_format(q.format))
    xb = blocks.to_blocks(x.astype(jnp.float32), q.meta.block_shape)
    s = q.block_scale()
    y = xb / blocks.expand(jnp.where(s > 0, s, 1.0))  # 0: underflowed MX/NVFP4 scale, as encode
    if q.zero_point is not None:
        y = y + blocks.expand(q.zero_point.astype(jnp.float32))
    return blocks.from_blocks(_inside(y, lo, hi), x.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def fake_quant_ste(x: Array, spec: ArraySpec) -> Array:
    """x (shape S, float) rounded onto `spec`'s grid exactly as quantize_array + dequantize
    (same shape and dtype); gradient: straight through inside the clipping range, 0 outside."""
    return quantize_array(x, spec).dequantize(x.dtype)


def _weight_fwd(x: Array, spec: ArraySpec) -> tuple[Array, Array]:
    q = quantize_array(x, spec)
    return q.dequantize(x.dtype), clip_mask(x, q)


def _weight_bwd(spec: ArraySpec, mask: Array, g: Array) -> tuple[Array]:
    return (jnp.where(mask, g, jnp.zeros_like(g)),)


fake_quant_ste.defvjp(_weight_fwd, _weight_bwd)


def _activation_round_trip(x: Array, spec: ActivationSpec, contracting: tuple[int, ...]
                           ) -> tuple[Array, Array]:
    vals, s = quantize_activation(x, spec, contracting)
    y = (vals.astype(jnp.float32) * s).astype(x.dtype)
    return y, _inside(x.astype(jnp.float32) / s, *code_range(get_format(spec.format)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def fake_quant_activation(x: Array, spec: ActivationSpec, contracting: tuple[int, ...]) -> Array:
    """Activations x (any float shape) through the dynamic activation quantizer of W8A8 dots
    (per token over the `contracting` axes, or per tensor) and back, in x.dtype; gradient
    straight through inside [-qmax * scale, qmax * scale], 0 outside (scales held constant)."""
    return _activation_round_trip(x, spec, contracting)[0]


def _activation_fwd(x: Array, spec: ActivationSpec, contracting: tuple[int, ...]
                    ) -> tuple[Array, Array]:
    return _activation_round_trip(x, spec, contracting)


def _activation_bwd(spec: ActivationSpec, contracting: tuple[int, ...], mask: Array, g: Array
                    ) -> tuple[Array]:
    return (jnp.where(mask, g, jnp.zeros_like(g)),)


fake_quant_activation.defvjp(_activation_fwd, _activation_bwd)
