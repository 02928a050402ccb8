"""Round-to-nearest quantization of one array to a QArray, and its inverse."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import Array

from jaxquant.calibration.clipping import block_range
from jaxquant.core import blocks
from jaxquant.core.qarray import QArray, QMeta
from jaxquant.core.scales import Scales, asymmetric_scales, encode_blocks, symmetric_scales
from jaxquant.core.spec import ArraySpec
from jaxquant.formats.packing import pack_nibbles
from jaxquant.formats.registry import QuantFormat, get_format


def scales_for_range(fmt: QuantFormat, spec: ArraySpec, lo: Array, hi: Array,
                     tensor_amax: Array | None = None) -> Scales:
    """Grid-shaped block range (lo, hi) -> Scales under `fmt` and `spec` (NVFP4: the tensor
    scale comes from `tensor_amax` when given, else from the largest block range)."""
    if fmt.asymmetric:
        return asymmetric_scales(fmt, lo, hi, spec.scale_dtype)
    codec = fmt.codec
    if spec.clipping.signed and getattr(codec, "full_range", False):
        # scale = max(hi / qhi, lo / qlo), passed on as the amax that symmetric_scales divides
        # by qmax, so the storage rules downstream (rounding up, bf16) stay the same
        qlo, qhi = codec.code_bounds
        scale = jnp.maximum(jnp.maximum(hi, 0.0) / qhi, jnp.minimum(lo, 0.0) / qlo)
        return symmetric_scales(fmt, scale * codec.qmax, spec.scale_dtype, spec.double_quant,
                                tensor_amax)
    amax = jnp.maximum(jnp.abs(lo), jnp.abs(hi))
    return symmetric_scales(fmt, amax, spec.scale_dtype, spec.double_quant, tensor_amax)


def quantize_with_scales(x: Array, spec: ArraySpec, sc: Scales) -> QArray:
    """Encode x (shape S, any float dtype) with given block scales into a QArray."""
    fmt = get_format(spec.format)
    codes = encode_blocks(blocks.to_blocks(x.astype(jnp.float32), spec.block_shape), fmt, sc)
    codes = blocks.from_blocks(codes, x.shape)
    qvalue = pack_nibbles(codes, spec.axis) if fmt.codec.packed else codes
    meta = QMeta(
        format=spec.format,
        shape=tuple(x.shape),
        dtype=jnp.dtype(x.dtype).name,
        block_shape=spec.block_shape,
        axis=spec.axis % max(x.ndim, 1),
        granularity=spec.granularity,
    )
    return QArray(qvalue, sc.stored, sc.zero_point, meta)


@functools.partial(jax.jit, static_argnames="spec")
def quantize_array(x: Array, spec: ArraySpec) -> QArray:
    """Round-to-nearest quantization of a finite float array x of shape S under `spec`.

    The block range comes from spec.clipping (min-max, percentile or MSE search); scales are
    computed per block and rounded to their storage dtype before encoding, so that dequantize
    reproduces exactly the grid the codes were chosen on.
    """
    fmt = get_format(spec.format)
    xb = blocks.to_blocks(x.astype(jnp.float32), spec.block_shape)
    ragged = blocks.padded_shape(x.shape, spec.block_shape) != tuple(x.shape)
    if spec.clipping.method == "percentile" and ragged:
        # the zero padding of ragged last blocks must not enter their percentiles: mark it NaN
        valid = blocks.to_blocks(jnp.ones(x.shape, bool), spec.block_shape)
        xb = jnp.where(valid, xb, jnp.nan)
    scales_fn = functools.partial(scales_for_range, fmt, spec)
    if spec.clipping.method == "mse" and fmt.scale_kind == "nvfp4":
        # The MSE search scores each block on its own; NVFP4's tensor scale would couple the
        # blocks (it follows the largest clipped range), so fix it from the unclipped range:
        # every block is then stored with exactly the scale its search chose.
        amax = jnp.max(jnp.abs(xb))
        scales_fn = functools.partial(scales_for_range, fmt, spec, tensor_amax=amax)
    lo, hi = block_range(xb, fmt, spec.clipping, scales_fn)
    return quantize_with_scales(x, spec, scales_fn(lo, hi))


def fake_quantize(x: Array, spec: ArraySpec) -> Array:
    """dequantize(quantize(x)): x rounded onto the format's grid, same shape and dtype."""
    return quantize_array(x, spec).dequantize(x.dtype)
