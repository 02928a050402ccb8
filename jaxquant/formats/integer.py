"""Integer element codecs: symmetric signed INTb and asymmetric unsigned UINTb.

Range choice: symmetric formats quantize to [-(2^(b-1) - 1), 2^(b-1) - 1], i.e. [-127, 127] for
INT8 and [-7, 7] for INT4. Giving up the most negative code keeps the grid symmetric, so the
largest magnitude of a block maps exactly onto +-qmax and negation is exact; [-8, 7] with
scale = amax / 8 would clip the positive maximum. Storage still accepts the full two's
complement range, so checkpoints from tools that use -8 (GPTQ, compressed-tensors) decode.
Asymmetric formats use [0, 2^b - 1] with an integer zero-point.
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
    """

    bits: int
    signed: bool

    @property
    def packed(self) -> bool:
        return self.bits <= 4

    @property
    def qmax(self) -> float:
        """Largest magnitude the symmetric quantizer emits; the scale maps the block's amax to it."""
        return float(2 ** (self.bits - 1) - 1) if self.signed else float(2**self.bits - 1)

    @property
    def levels(self) -> int:
        return 2**self.bits - 1

    @property
    def storage_dtype(self) -> jnp.dtype:
        if self.packed:
            return jnp.dtype(jnp.uint8)
        return jnp.dtype(jnp.int8 if self.signed else jnp.uint8)

    def encode(self, y: Array) -> Array:
        if self.signed:
            q = jnp.clip(jnp.round(y), -self.qmax, self.qmax).astype(jnp.int32)
            return to_signed_nibble(q) if self.packed else q.astype(jnp.int8)
        q = jnp.clip(jnp.round(y), 0, self.levels)
        return q.astype(jnp.uint8)

    def decode(self, codes: Array) -> Array:
        if self.signed and self.packed:
            return from_signed_nibble(codes).astype(jnp.float32)
        return codes.astype(jnp.float32)
