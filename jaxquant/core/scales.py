"""Block scales: from a block's range to the stored scale, zero-point and the f32 scale used to
encode. All arrays here are of grid shape G (one entry per block) unless named `*_blocks`."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
from jax import Array

from jaxquant.core import blocks
from jaxquant.core.qarray import QArray, QMeta
from jaxquant.formats.floating import e8m0_decode, e8m0_encode, e8m0_exponent
from jaxquant.formats.registry import QuantFormat, get_format

NVFP4_BLOCK_SCALE_MAX = 448.0  # E4M3fn max
DOUBLE_QUANT_BLOCK = 256


@dataclasses.dataclass(frozen=True)
class Scales:
    """stored: what QArray.scale holds. effective: f32 grid scale that decoding applies (0 only
    where an NVFP4/MX block scale underflows; encoding then divides by 1 instead)."""

    stored: Array | QArray
    zero_point: Array | None
    effective: Array


def round_up_cast(s: Array, dtype: jnp.dtype) -> Array:
    """Cast a positive f32 scale to `dtype`, rounding up so that amax / scale <= qmax still holds."""
    c = s.astype(dtype)
    return jnp.where(c.astype(jnp.float32) < s, jnp.nextafter(c, jnp.array(jnp.inf, dtype)), c)


def _nonzero(s: Array) -> Array:
    """Replace zero (all-zero block, or underflow) and non-finite scales by 1: codes become 0."""
    return jnp.where((s > 0) & jnp.isfinite(s), s, 1.0)


def symmetric_scales(fmt: QuantFormat, amax: Array, scale_dtype: str, double_quant: bool,
                     tensor_amax: Array | None = None) -> Scales:
    """amax f32 [G] (>= 0) -> scales for a symmetric format. NVFP4 derives its tensor scale from
    `tensor_amax` when given, else from max(amax)."""
    qmax = fmt.codec.qmax
    if fmt.scale_kind == "e8m0":
        exp = e8m0_exponent(amax, fmt.codec.emax)
        stored = e8m0_encode(exp)
        return Scales(stored, None, e8m0_decode(stored))
    if fmt.scale_kind == "nvfp4":
        return _nvfp4_scales(amax, qmax, tensor_amax)
    s = _nonzero(amax / qmax)
    if double_quant:
        nested = double_quantize(s)
        eff = nested.dequantize(jnp.float32)[: math.prod(s.shape)].reshape(s.shape)
        return Scales(nested, None, eff)
    stored = round_up_cast(s, jnp.dtype(scale_dtype))
    return Scales(stored, None, _nonzero(stored.astype(jnp.float32)))


def asymmetric_scales(fmt: QuantFormat, lo: Array, hi: Array, scale_dtype: str) -> Scales:
    """Block min `lo` and max `hi` f32 [G] -> scale and uint8 zero-point; the range covers 0."""
    levels = float(fmt.codec.levels)
    lo = jnp.minimum(lo, 0.0)
    hi = jnp.maximum(hi, 0.0)
    width = hi - lo
    zp = jnp.where(width > 0, jnp.round(-lo * levels / jnp.where(width > 0, width, 1.0)), 0.0)
    zp = jnp.clip(zp, 0, levels).astype(jnp.uint8)
    stored = round_up_cast(_nonzero(width / levels), jnp.dtype(scale_dtype))
    return Scales(stored, zp, _nonzero(stored.astype(jnp.float32)))


def _nvfp4_scales(amax: Array, qmax: float, tensor_amax: Array | None = None) -> Scales:
    """NVFP4: tensor scale = amax(tensor) / (448 * 6); block scale in E4M3 = amax / 6 / tensor scale."""
    t_amax = jnp.max(amax) if tensor_amax is None else tensor_amax
    tensor_scale = _nonzero(t_amax / (NVFP4_BLOCK_SCALE_MAX * qmax)).astype(jnp.float32)
    block = jnp.clip(amax / qmax / tensor_scale, 0.0, NVFP4_BLOCK_SCALE_MAX)
    block_fp8 = block.astype(jnp.float8_e4m3fn)
    ones = (1,) * amax.ndim
    nested = QArray(
        qvalue=block_fp8,
        scale=tensor_scale.reshape(ones),
        zero_point=None,
        meta=QMeta("fp8_e4m3", tuple(amax.shape), "float32", tuple(amax.shape), 0, "tensor"),
    )
    return Scales(nested, None, block_fp8.astype(jnp.float32) * tensor_scale)


def double_quantize(s: Array) -> QArray:
    """NF4 double quantization: f32 scales [G] -> a QArray over the flattened scales (padded to a
    multiple of 256 with their mean) holding int8 codes of (s - mean) in blocks of 256, f32
    block scales, and the mean as offset."""
    flat = s.reshape(-1)
    n = flat.shape[0]
    n_pad = -(-n // DOUBLE_QUANT_BLOCK) * DOUBLE_QUANT_BLOCK
    mean = jnp.mean(flat)
    centered = jnp.pad(flat, (0, n_pad - n), constant_values=mean) - mean
    fmt = get_format("int8")
    cb = blocks.to_blocks(centered, (DOUBLE_QUANT_BLOCK,))
    amax = blocks.squeeze_inner(jnp.max(jnp.abs(cb), axis=1, keepdims=True))
    sc = _nonzero(amax / fmt.codec.qmax)
    codes = fmt.codec.encode(cb / blocks.expand(sc)).reshape(n_pad)
    meta = QMeta("int8", (n_pad,), "float32", (DOUBLE_QUANT_BLOCK,), 0, "group")
    return QArray(codes, sc, None, meta, offset=mean.astype(jnp.float32))


def encode_blocks(xb: Array, fmt: QuantFormat, sc: Scales) -> Array:
    """Blocked f32 values -> blocked codes."""
    y = xb / blocks.expand(_nonzero(sc.effective))
    if sc.zero_point is not None:
        y = y + blocks.expand(sc.zero_point.astype(jnp.float32))
    return fmt.codec.encode(y)


def decode_blocks(codes_b: Array, fmt: QuantFormat, sc: Scales) -> Array:
    """Blocked codes -> blocked f32 values (what dequantize returns, before the final reshape)."""
    v = fmt.codec.decode(codes_b)
    if sc.zero_point is not None:
        v = v - blocks.expand(sc.zero_point.astype(jnp.float32))
    return v * blocks.expand(sc.effective)
