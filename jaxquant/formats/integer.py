"""Integer element codecs: symmetric signed INTb (restricted or full range) and asymmetric
unsigned UINTb.

Two symmetric grids (both store b-bit two's complement codes and decode the same way):
  restricted ("int{b}")    codes in [-(2^(b-1) - 1), 2^(b-1) - 1], scale = amax / (2^(b-1) - 1):
                           [-7, 7] for INT4, [-127, 127] for INT8. Giving up the most negative
                           code keeps the grid symmetric, so a block's largest magnitude maps
                           exactly onto +-qmax and negation is exact.
  full ("int{b}_full")     codes in [-2^(b-1), 2^(b-1) - 1], scale = amax / (2^(b-1) - 0.5):
                           [-8, 7] with amax -> 7.5 for INT4 (127.5 for INT8), the grid of
                           Qwix, AutoGPTQ and compressed-tensors. Sixteen levels instead of
                           fifteen: the step is amax / 7.5 instead of amax / 7, and a block's
                           +amax (7.5 steps) rounds to 8 and is clipped to 7, an error of half a
                           step, no more than rounding anywhere else; -amax is exactly -8.
Storage of either accepts the full two's complement range, so checkpoints from tools that use
-8 (GPTQ, compressed-tensors) decode under both. Asymmetric formats use [0, 2^b - 1] with an
integer zero-point.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jax import Array

from jaxquant.formats.packing import from_signed_nibble, to_signed_nibble


@dataclasses.dataclass(frozen=True)
class IntCodec:
    """b-bit integer codes. Codes of b <= 4 are nibbles (uint8 in [0, 15]) packed two per byte.

    encode: f32 y (already divided by the scale, zero-point added for asymmetric) -> codes
    decode: codes -> f32 integer values (zero-point not yet subtracted)
    full_range: signed only; the [-2^(b-1), 2^(b-1) - 1] grid (see the module docstring).
    """

    bits: int
    signed: bool
    full_range: bool = False

    @property
    def packed(self) -> bool:
        return self.bits <= 4

    @property
    def qmax(self) -> float:
        """What a block's amax maps onto (symmetric scale = amax / qmax): 2^(b-1) - 1, or
        2^(b-1) - 0.5 on the full-range grid; 2^b - 1 for unsigned codes."""
        if not self.signed:
            return float(2**self.bits - 1)
        return 2.0 ** (self.bits - 1) - (0.5 if self.full_range else 1.0)

    @property
    def code_bounds(self) -> tuple[float, float]:
        """(smallest, largest) integer value that encode emits."""
        if not self.signed:
            return 0.0, float(self.levels)
        hi = float(2 ** (self.bits - 1) - 1)
        return (-hi - 1.0 if self.full_range else -hi), hi

    @property
    def levels(self) -> int:
        return 2**self.bits - 1

    @property
    def storage_dtype(self) -> jnp.dtype:
        if self.packed:
            return jnp.dtype(jnp.uint8)
        return jnp.dtype(jnp.int8 if self.signed else jnp.uint8)

    def round_clip(self, y: Array) -> Array:
        """f32 y -> f32 integer values: round half to even, clipped to code_bounds."""
        lo, hi = self.code_bounds
        return jnp.clip(jnp.round(y), lo, hi)

    def encode(self, y: Array) -> Array:
        q = self.round_clip(y)
        if self.signed:
            q = q.astype(jnp.int32)
            return to_signed_nibble(q) if self.packed else q.astype(jnp.int8)
        return q.astype(jnp.uint8)

    def decode(self, codes: Array) -> Array:
        if self.signed and self.packed:
            return from_signed_nibble(codes).astype(jnp.float32)
        return codes.astype(jnp.float32)
