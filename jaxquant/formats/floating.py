"""Floating-point element codecs: FP8 (E4M3fn, E5M2), FP4 E2M1, and the E8M0 scale encoding.

FP8 casts saturate: values beyond the largest finite magnitude clamp to it (448 for E4M3fn,
57344 for E5M2) instead of becoming NaN/Inf. E2M1 (OCP MX v1.0) has the magnitudes
{0, 0.5, 1, 1.5, 2, 3, 4, 6}; a code is sign<<3 | index into that list, rounding to nearest with
ties to the even index, saturating at 6.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from jax import Array

E2M1_MAGNITUDES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], np.float32)
E2M1_VALUES = np.concatenate([E2M1_MAGNITUDES, -E2M1_MAGNITUDES]).astype(np.float32)
_E2M1_MIDPOINTS = (E2M1_MAGNITUDES[1:] + E2M1_MAGNITUDES[:-1]) / 2

E8M0_BIAS = 127


@dataclasses.dataclass(frozen=True)
class FP8Codec:
    """FP8 codes stored as the jnp float8 dtype (1 byte). encode/decode as IntCodec."""

    dtype_name: str  # "float8_e4m3fn" | "float8_e5m2"
    emax: int  # exponent of the largest normal, used by MX scale selection

    bits = 8
    packed = False

    @property
    def storage_dtype(self) -> jnp.dtype:
        return jnp.dtype(getattr(jnp, self.dtype_name))

    @property
    def qmax(self) -> float:
        return float(jnp.finfo(self.storage_dtype).max)

    def encode(self, y: Array) -> Array:
        return jnp.clip(y, -self.qmax, self.qmax).astype(self.storage_dtype)

    def decode(self, codes: Array) -> Array:
        return codes.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class E2M1Codec:
    """FP4 E2M1 codes as uint8 nibbles (packed two per byte)."""

    bits = 4
    packed = True
    emax = 2
    qmax = 6.0
    storage_dtype = jnp.dtype(jnp.uint8)

    def encode(self, y: Array) -> Array:
        mag = jnp.minimum(jnp.abs(y), self.qmax)
        mids = jnp.asarray(_E2M1_MIDPOINTS)
        idx = jnp.sum(mag[..., None] > mids, axis=-1).astype(jnp.int32)
        tie = jnp.any(mag[..., None] == mids, axis=-1)
        idx = idx + (tie & (idx % 2 == 1)).astype(jnp.int32)
        sign = jnp.signbit(y).astype(jnp.int32)
        return ((sign << 3) | idx).astype(jnp.uint8)

    def decode(self, codes: Array) -> Array:
        return jnp.asarray(E2M1_VALUES)[codes.astype(jnp.int32)]


def e8m0_exponent(amax: Array, elem_emax: int) -> Array:
    """OCP MX shared exponent floor(log2(amax)) - elem_emax, clamped to [-127, 127]; int32.

    A block of zeros gets the smallest exponent (-127).
    """
    _, e = jnp.frexp(amax.astype(jnp.float32))
    exp = e.astype(jnp.int32) - 1 - elem_emax
    exp = jnp.where(amax > 0, exp, -E8M0_BIAS)
    return jnp.clip(exp, -E8M0_BIAS, E8M0_BIAS)


def e8m0_encode(exponent: Array) -> Array:
    """int32 exponent -> uint8 biased E8M0 code (255 is NaN and never produced)."""
    return (exponent + E8M0_BIAS).astype(jnp.uint8)


def e8m0_decode(codes: Array) -> Array:
    """uint8 E8M0 code -> f32 power of two 2^(code - 127); code 255 -> NaN."""
    exp = codes.astype(jnp.int32) - E8M0_BIAS
    val = jnp.ldexp(jnp.ones(codes.shape, jnp.float32), exp)
    return jnp.where(codes == 255, jnp.nan, val)
