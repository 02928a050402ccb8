"""Packing of 4-bit codes two per byte.

Layout (the contract every kernel and checkpoint exporter relies on):
  codes: uint8 array whose values are 4-bit codes in [0, 15], logical shape S.
  packed along `axis`: shape S with S[axis] -> ceil(S[axis] / 2), dtype uint8.
  packed[..., i, ...] = codes[..., 2i, ...] | (codes[..., 2i + 1, ...] << 4)
  i.e. the even element sits in the low nibble, the odd element in the high nibble.
  An odd length along `axis` is padded with one zero code; `unpack_nibbles` takes the
  logical length back.

Signed formats store two's complement nibbles (-1 -> 0xF); `to_signed_nibble` /
`from_signed_nibble` convert.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array


def pack_nibbles(codes: Array, axis: int) -> Array:
    """uint8 codes in [0, 15] of shape S -> uint8 of shape S with S[axis] halved (ceil)."""
    codes = jnp.asarray(codes, jnp.uint8)
    axis = axis % codes.ndim
    n = codes.shape[axis]
    if n % 2:
        pad = [(0, 0)] * codes.ndim
        pad[axis] = (0, 1)
        codes = jnp.pad(codes, pad)
    shape = codes.shape
    pairs = codes.reshape(shape[:axis] + (shape[axis] // 2, 2) + shape[axis + 1 :])
    lo = jnp.take(pairs, 0, axis=axis + 1)
    hi = jnp.take(pairs, 1, axis=axis + 1)
    return (lo & 0xF) | ((hi & 0xF) << 4)


def unpack_nibbles(packed: Array, axis: int, length: int) -> Array:
    """Inverse of `pack_nibbles`: uint8 packed -> uint8 codes with `length` along `axis`."""
    packed = jnp.asarray(packed, jnp.uint8)
    axis = axis % packed.ndim
    lo = packed & 0xF
    hi = packed >> 4
    pairs = jnp.stack([lo, hi], axis=axis + 1)
    shape = packed.shape
    codes = pairs.reshape(shape[:axis] + (shape[axis] * 2,) + shape[axis + 1 :])
    return jnp.take(codes, jnp.arange(length), axis=axis) if length != codes.shape[axis] else codes


def to_signed_nibble(values: Array) -> Array:
    """int values in [-8, 7] -> uint8 two's complement nibbles in [0, 15]."""
    return (jnp.asarray(values, jnp.int32) & 0xF).astype(jnp.uint8)


def from_signed_nibble(codes: Array) -> Array:
    """uint8 nibbles in [0, 15] -> int8 values in [-8, 7]."""
    c = jnp.asarray(codes, jnp.int8)
    return jnp.where(c >= 8, c - 16, c).astype(jnp.int8)
