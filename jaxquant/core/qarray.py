"""QArray: a quantized array as a JAX pytree.

Invariants (S = logical shape, B = meta.block_shape, G = ceil(S / B) elementwise, the scale
grid; a last block that B does not fill is ragged):
  qvalue      codes in the format's storage dtype. 4-bit (and 3/2-bit) codes are uint8 nibbles
              packed two per byte along meta.axis: shape S with S[axis] -> ceil(S[axis] / 2).
              Other formats: shape S (int8, uint8, float8_*).
  scale       the block scales, one per block, of grid shape G: f32/bf16 for "float" formats,
              uint8 E8M0 codes for MX formats, or itself a QArray (NVFP4's E4M3 block scales
              under an f32 tensor scale; NF4 double quantization, where the nested QArray holds
              the flattened grid padded to a multiple of its block).
  zero_point  uint8 of grid shape G for asymmetric formats, else None.
  input_scale f32 static scale of the layer's input activations (calibrated), else None; the
              activation scheme is meta.activation.
  input_smooth f32 [S[axis]] per-input-channel divisor of the layer's activations (AWQ /
              SmoothQuant scales with no preceding op to fold into; W holds W * smooth), else None.
  offset      f32 scalar added after scaling, else None. Only NF4 double quantization uses it:
              the nested scale QArray stores block absmax values minus their mean (as bitsandbytes).
  meta        static: format name, S, logical dtype, B, axis, granularity, layout, and the
              activation scheme the layer's inputs get at inference (None: weight-only).
Layout "nk" (a GPU inference layout of 4-bit [K, N] weights, made once by
jaxquant.inference.gpu_layout.to_gpu_layout for the Mosaic GPU W4A16 kernel): qvalue is
jnp.int4 [N, K] holding the signed values (asymmetric codes minus 8), scale bf16 and, for
asymmetric formats, zero_point bf16 (zero point minus 8) of grid shape G; codes() and
dequantize() return what the canonical layout gives.
Element (i0, i1, ...) dequantizes to (decode(code) - zero_point[g]) * scale[g] (+ offset) with
g = (i0 // B[0], i1 // B[1], ...). Works under jit, vmap (stack QArrays of equal meta),
device_put and shardings: only the array fields are leaves.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from jaxquant.core import blocks
from jaxquant.core.spec import ActivationSpec
from jaxquant.formats.floating import e8m0_decode
from jaxquant.formats.packing import unpack_nibbles
from jaxquant.formats.registry import get_format


@dataclasses.dataclass(frozen=True)
class QMeta:
    """Static metadata of a QArray (hashable; part of the pytree structure)."""

    format: str
    shape: tuple[int, ...]
    dtype: str
    block_shape: tuple[int, ...]
    axis: int
    granularity: str = "channel"
    layout: str = "canonical"
    activation: ActivationSpec | None = None

    @property
    def grid(self) -> tuple[int, ...]:
        return blocks.grid_shape(self.shape, self.block_shape)


LAYOUT_NK = "nk"
_NIBBLE_DTYPES = (jnp.dtype(jnp.int4), jnp.dtype(jnp.uint4))


def _nbytes(x: Any) -> int:
    if x is None:
        return 0
    if isinstance(x, QArray):
        return x.nbytes
    n = int(math.prod(x.shape))
    if jnp.dtype(x.dtype) in _NIBBLE_DTYPES:  # stored packed two per byte on device
        return -(-n // 2)
    return n * jnp.dtype(x.dtype).itemsize


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QArray:
    """A quantized array; see the module docstring for the exact invariants."""

    qvalue: Array
    scale: Union[Array, "QArray"]
    zero_point: Array | None
    meta: QMeta = dataclasses.field(metadata=dict(static=True))
    offset: Array | None = None
    input_scale: Array | None = None
    input_smooth: Array | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.meta.shape

    @property
    def ndim(self) -> int:
        return len(self.meta.shape)

    @property
    def size(self) -> int:
        return int(math.prod(self.meta.shape))

    @property
    def dtype(self) -> np.dtype:
        return jnp.dtype(self.meta.dtype)

    @property
    def format(self) -> str:
        return self.meta.format

    @property
    def nbytes(self) -> int:
        """Real storage in bytes: codes + scales (recursively) + zero-points."""
        parts = (self.qvalue, self.scale, self.zero_point, self.offset, self.input_scale,
                 self.input_smooth)
        return sum(_nbytes(p) for p in parts)

    @property
    def logical_nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def bits_per_element(self) -> float:
        return 8.0 * self.nbytes / max(self.size, 1)

    def codes(self) -> Array:
        """Unpacked element codes of the logical shape (uint8 nibbles, int8, uint8 or float8)."""
        fmt = get_format(self.meta.format)
        if self.meta.layout == LAYOUT_NK:
            v = self.qvalue.T.astype(jnp.int32)  # signed values [K, N]
            return ((v + 8) if fmt.asymmetric else (v & 0xF)).astype(jnp.uint8)
        if fmt.codec.packed:
            return unpack_nibbles(self.qvalue, self.meta.axis, self.meta.shape[self.meta.axis])
        return self.qvalue

    def block_scale(self) -> Array:
        """The effective f32 scale of every block, of grid shape."""
        grid = self.meta.grid
        if isinstance(self.scale, QArray):
            s = self.scale.dequantize(jnp.float32)
            if s.shape != grid:
                s = s.reshape(-1)[: math.prod(grid)].reshape(grid)
            return s
        if get_format(self.meta.format).scale_kind == "e8m0":
            return e8m0_decode(self.scale)
        return self.scale.astype(jnp.float32)

    def dequantize(self, dtype: Any = None) -> Array:
        """The logical array: shape meta.shape, dtype `dtype` or meta.dtype."""
        fmt = get_format(self.meta.format)
        if self.meta.layout == LAYOUT_NK:  # signed values; zero points already minus 8
            values = blocks.to_blocks(self.qvalue.T.astype(jnp.float32), self.meta.block_shape)
        else:
            values = blocks.to_blocks(fmt.codec.decode(self.codes()), self.meta.block_shape)
        if self.zero_point is not None:
            values = values - blocks.expand(self.zero_point.astype(jnp.float32))
        out = blocks.from_blocks(values * blocks.expand(self.block_scale()), self.meta.shape)
        if self.offset is not None:
            out = out + self.offset.astype(jnp.float32)
        return out.astype(dtype or self.meta.dtype)

    def __repr__(self) -> str:
        ratio = self.logical_nbytes / max(self.nbytes, 1)
        return (
            f"QArray({self.meta.format}, shape={self.meta.shape}, dtype={self.meta.dtype}, "
            f"{self.meta.granularity} block={self.meta.block_shape}, "
            f"{self.nbytes} bytes, {self.bits_per_element:.2f} bits/elem, {ratio:.2f}x smaller)"
        )


def is_qarray(x: Any) -> bool:
    return isinstance(x, QArray)
