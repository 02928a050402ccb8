"""Views of an array as a grid of blocks.

A block shape B (same rank as the array shape S, with B[i] dividing S[i]) tiles the array into
S[i] / B[i] blocks along each axis. The "blocked" view has shape
(S[0]/B[0], B[0], S[1]/B[1], B[1], ...): even positions index blocks, odd positions index
elements inside a block. Per-tensor, per-channel, per-group, 2-D block and per-token
granularities are all block shapes.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import Array


def grid_shape(shape: tuple[int, ...], block: tuple[int, ...]) -> tuple[int, ...]:
    """Number of blocks along each axis (the shape of the scale array)."""
    return tuple(s // b for s, b in zip(shape, block))


def blocked_shape(shape: tuple[int, ...], block: tuple[int, ...]) -> tuple[int, ...]:
    out: list[int] = []
    for s, b in zip(shape, block):
        out += [s // b, b]
    return tuple(out)


def inner_axes(ndim: int) -> tuple[int, ...]:
    """Axes of the blocked view that run inside a block."""
    return tuple(range(1, 2 * ndim, 2))


def to_blocks(x: Array, block: tuple[int, ...]) -> Array:
    return x.reshape(blocked_shape(x.shape, block))


def expand(values: Array) -> Array:
    """A per-block array of grid shape G -> shape (G[0], 1, G[1], 1, ...) to broadcast on blocks."""
    out: list[int] = []
    for g in values.shape:
        out += [g, 1]
    return values.reshape(tuple(out))


def squeeze_inner(values: Array) -> Array:
    """Inverse of `expand`: (G[0], 1, G[1], 1, ...) -> G."""
    return values.reshape(values.shape[0::2])


def block_size(block: tuple[int, ...]) -> int:
    return math.prod(block)


def move_inner_last(xb: Array) -> Array:
    """Blocked view -> (G[0], G[1], ..., elements_per_block)."""
    nd = xb.ndim // 2
    perm = tuple(range(0, 2 * nd, 2)) + inner_axes(nd)
    moved = jnp.transpose(xb, perm)
    return moved.reshape(moved.shape[:nd] + (-1,))
