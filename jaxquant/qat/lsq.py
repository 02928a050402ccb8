"""Learned step size (LSQ, Esser et al. 2020) fake quantization: block scales as parameters.

The scale of every block is a trainable f32 log-scale (grid shape G), so it stays positive
(and finite: the log is clamped to LOG_SCALE_RANGE) whatever the optimizer does. Forward: the
real format's round trip with scale = exp(log_scale)
(rounded to the scheme's scale dtype, as stored). Backward, with v = x / s (+ zero-point) and
Q = decode(encode(v)) (- zero-point):
    d out / d x = 1 inside the clipping range, 0 outside            (straight through)
    d out / d s = Q - x / s inside, Q outside, times grad_scale      (LSQ)
and the chain rule gives d / d log_scale = s * d / d s.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import Array

from jaxquant.core import blocks
from jaxquant.core.scales import Scales, decode_blocks, encode_blocks, round_up_cast
from jaxquant.core.spec import ArraySpec
from jaxquant.errors import FormatError
from jaxquant.formats.registry import get_format
from jaxquant.qat.ste import code_range


def check_learnable(spec: ArraySpec, name: str = "weight") -> None:
    """FormatError unless `spec`'s scales are one plain float per block (what LSQ learns)."""
    fmt = get_format(spec.format)
    if fmt.scale_kind != "float" or spec.double_quant:
        kind = "double-quantized" if spec.double_quant else {
            "e8m0": "power-of-two E8M0", "nvfp4": "E4M3-times-tensor-scale"}[fmt.scale_kind]
        raise FormatError(
            f"{name}: format {spec.format} has no differentiable scale path ({kind} scales are "
            "not a float per block), so learn_scales=True cannot apply; use learn_scales=False "
            "(straight-through weights, scales recomputed each step) or an int/uint/fp8/fp4_e2m1/"
            "nf4 scheme without double_quant"
        )


def lsq_grad_scale(spec: ArraySpec) -> float:
    """LSQ gradient scale 1 / sqrt(elements per block * largest positive code)."""
    hi = code_range(get_format(spec.format))[1]
    return 1.0 / math.sqrt(blocks.block_size(spec.block_shape) * hi)


# exp of a log-scale clamped to this range is a positive, finite, normal f32 (and bf16) number
LOG_SCALE_RANGE = (-80.0, 80.0)


def positive_scale(log_scale: Array) -> Array:
    """exp(log_scale) in f32, with log_scale clamped to LOG_SCALE_RANGE: always > 0 and finite."""
    return jnp.exp(jnp.clip(log_scale.astype(jnp.float32), *LOG_SCALE_RANGE))


def stored_scale(log_scale: Array, spec: ArraySpec) -> Array:
    """The scale as QArray.scale stores it: positive_scale(log_scale) rounded up to
    spec.scale_dtype."""
    return round_up_cast(positive_scale(log_scale), jnp.dtype(spec.scale_dtype))


def _scales(s: Array, zero_point: Array | None) -> Scales:
    zp = None if zero_point is None else zero_point.astype(jnp.uint8)
    return Scales(s, zp, s)


def _round_trip(x: Array, s: Array, zero_point: Array | None, spec: ArraySpec
                ) -> tuple[Array, Array, Array]:
    """(out in x.dtype, blocked v = x / s (+ zp), blocked Q) for scale s f32 [G]."""
    fmt = get_format(spec.format)
    sc = _scales(s, zero_point)
    xb = blocks.to_blocks(x.astype(jnp.float32), spec.block_shape)
    codes = encode_blocks(xb, fmt, sc)
    out = blocks.from_blocks(decode_blocks(codes, fmt, sc), x.shape).astype(x.dtype)
    v = xb / blocks.expand(s)
    q = fmt.codec.decode(codes)
    if zero_point is not None:
        v = v + blocks.expand(zero_point.astype(jnp.float32))
    return out, v, q


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def lsq_fake_quant(x: Array, s: Array, zero_point: Array | None, spec: ArraySpec,
                   grad_scale: float) -> Array:
    """x (shape S, float) quantized with block scales s (f32, grid shape G, > 0) and optional
    zero-points (f32 holding integers, grid shape; no gradient) -> same shape and dtype."""
    return _round_trip(x, s, zero_point, spec)[0]


def _fwd(x, s, zero_point, spec, grad_scale):
    out, v, q = _round_trip(x, s, zero_point, spec)
    lo, hi = code_range(get_format(spec.format))
    inside = (v >= lo) & (v <= hi)
    zp = 0.0 if zero_point is None else blocks.expand(zero_point.astype(jnp.float32))
    ds_elem = jnp.where(inside, q - v, q - zp)  # d out / d s per element (blocked view)
    return out, (inside, ds_elem, s, zero_point)


def _bwd(spec, grad_scale, res, g):
    inside, ds_elem, s, zero_point = res
    gb = blocks.to_blocks(g.astype(jnp.float32), spec.block_shape)
    # padding of ragged blocks has g = 0 there, so it adds nothing to the block sums
    ds = blocks.squeeze_inner(jnp.sum(gb * ds_elem, axis=blocks.inner_axes(g.ndim),
                                      keepdims=True)) * grad_scale
    dx = blocks.from_blocks(jnp.where(inside, gb, 0.0), g.shape).astype(g.dtype)
    dzp = None if zero_point is None else jnp.zeros_like(zero_point)
    return dx, ds.astype(s.dtype), dzp


lsq_fake_quant.defvjp(_fwd, _bwd)


def lsq_weight(x: Array, log_scale: Array, zero_point: Array | None, spec: ArraySpec) -> Array:
    """Fake-quantized weight with learnable log-scales (see the module docstring): the scale
    used is stored_scale(log_scale), its rounding to the scale dtype passed straight through."""
    s = positive_scale(log_scale)
    stored = stored_scale(jax.lax.stop_gradient(log_scale), spec).astype(jnp.float32)
    s = s + jax.lax.stop_gradient(stored - s)
    zp = None if zero_point is None else jax.lax.stop_gradient(zero_point)
    return lsq_fake_quant(x, s, zp, spec, lsq_grad_scale(spec))
