"""Building QArrays from unpacked integer codes, and the PyTorch <-> Flax matrix transpose.

PyTorch-ecosystem checkpoints store a linear layer as W [out, in] with groups along `in`; a Flax
kernel is [in, out]. Imported layers become Flax kernels: QArray shape (in, out), axis 0,
block (group, 1). All functions here are numpy (host) code on unpacked codes: int values for
"int*" formats, unsigned codes for "uint*" (zero-point uint8 of the scale grid), float8 values for
"fp8_*".
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from jaxquant.core import blocks
from jaxquant.core.qarray import QArray, QMeta
from jaxquant.errors import JaxquantError
from jaxquant.formats.packing import pack_nibbles
from jaxquant.formats.registry import get_format


def granularity_of(shape: tuple[int, ...], block: tuple[int, ...], axis: int) -> str:
    if tuple(block) == tuple(shape):
        return "tensor"
    if block[axis] == shape[axis]:
        return "channel"
    return "group"


def make_qarray(codes: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, fmt: str,
                block: tuple[int, ...], axis: int, dtype: str, name: str) -> QArray:
    """QArray from logical-shape codes (int values for int*, unsigned for uint*, float8 for fp8)
    and grid-shape scale (f32/bf16; f16 is widened to f32 exactly) / zero-point."""
    f = get_format(fmt)
    shape = tuple(codes.shape)
    grid = blocks.grid_shape(shape, block)
    if tuple(scale.shape) != grid:
        raise JaxquantError(f"{name}: scale has shape {tuple(scale.shape)}, expected {grid} for "
                            f"shape {shape} in blocks {tuple(block)}")
    if zero_point is not None and tuple(zero_point.shape) != grid:
        raise JaxquantError(f"{name}: zero-point has shape {tuple(zero_point.shape)}, expected "
                            f"{grid}")
    if fmt.startswith("fp8"):
        q = jnp.asarray(codes.astype(f.codec.storage_dtype))
    elif f.codec.packed:
        u = codes.astype(np.int64) & 0xF  # two's complement nibbles for signed formats
        q = pack_nibbles(jnp.asarray(u.astype(np.uint8)), axis)
    else:
        q = jnp.asarray(codes.astype(f.codec.storage_dtype))
    if scale.dtype == np.float16 or scale.dtype == np.float64:
        scale = scale.astype(np.float32)
    zp = None if zero_point is None else jnp.asarray(zero_point.astype(np.uint8))
    meta = QMeta(format=fmt, shape=shape, dtype=dtype, block_shape=tuple(block), axis=axis,
                 granularity=granularity_of(shape, block, axis))
    return QArray(qvalue=q, scale=jnp.asarray(scale), zero_point=zp, meta=meta)


def int_codes(q: QArray) -> np.ndarray:
    """Logical-shape codes of an integer QArray: int32 values (signed formats) or unsigned."""
    c = np.asarray(q.codes())
    f = get_format(q.meta.format)
    if f.codec.packed and f.codec.signed:
        c = c.astype(np.int32)
        return np.where(c >= 8, c - 16, c)
    return c.astype(np.int32)


def transpose2d(q: QArray) -> QArray:
    """A 2-D QArray transposed ([a, b] axis i -> [b, a] axis 1 - i), codes and grids moved."""
    if q.ndim != 2 or isinstance(q.scale, QArray) or q.offset is not None:
        raise JaxquantError(f"transpose2d needs a 2-D QArray with plain scales, got {q!r}")
    f = get_format(q.meta.format)
    codes = np.asarray(q.codes())
    if f.codec.packed:
        q2 = pack_nibbles(jnp.asarray(codes.T), 1 - q.meta.axis)
    else:
        q2 = jnp.asarray(codes.T)
    zp = None if q.zero_point is None else q.zero_point.T
    meta = dataclasses.replace(q.meta, shape=q.meta.shape[::-1],
                               block_shape=q.meta.block_shape[::-1], axis=1 - q.meta.axis)
    return QArray(qvalue=q2, scale=q.scale.T, zero_point=zp, meta=meta,
                  input_scale=q.input_scale, input_smooth=q.input_smooth)
