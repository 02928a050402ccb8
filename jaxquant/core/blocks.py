"""Views of an array as a grid of blocks.

A block shape B (same rank as the array shape S) tiles the array into G[i] = ceil(S[i] / B[i])
blocks along each axis; where B[i] does not divide S[i] the last block is ragged (the blocked
view pads it with zeros, which never change a block's absmax). The "blocked" view has shape
(G[0], B[0], G[1], B[1], ...): even positions index blocks, odd positions index elements inside
a block. Per-tensor, per-channel, per-group, 2-D block and per-token
granularities are all block shapes.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import Array


def grid_shape(shape: tuple[int, ...], block: tuple[int, ...]) -> tuple[int, ...]:
    """Number of blocks along each axis (the shape of the scale array)."""
    return tuple(-(-s // b) for s, b in zip(shape, block))


def padded_shape(shape: tuple[int, ...], block: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(g * b for g, b in zip(grid_shape(shape, block), block))


def blocked_shape(shape: tuple[int, ...], block: tuple[int, ...]) -> tuple[int, ...]:
    out: list[int] = []
    for g, b in zip(grid_shape(shape, block), block):
        out += [g, b]
    return tuple(out)


def inner_axes(ndim: int) -> tuple[int, ...]:
    """Axes of the blocked view that run inside a block."""
    return tuple(range(1, 2 * ndim, 2))


def to_blocks(x: Array, block: tuple[int, ...]) -> Array:
    """x of shape S -> blocked view (zero-padded where a last block is ragged)."""
    pad = [(0, p - s) for s, p in zip(x.shape, padded_shape(x.shape, block))]
    if any(hi for _, hi in pad):
        x = jnp.pad(x, pad)
    return x.reshape(blocked_shape(x.shape, block))


def from_blocks(xb: Array, shape: tuple[int, ...]) -> Array:
    """Blocked view -> array of logical shape S (padding dropped)."""
    nd = len(shape)
    full = xb.reshape(tuple(xb.shape[2 * i] * xb.shape[2 * i + 1] for i in range(nd)))
    if full.shape != tuple(shape):
        full = full[tuple(slice(0, s) for s in shape)]
    return full


def repeat_blocks(values: Array, block: tuple[int, ...], shape: tuple[int, ...],
                  axes: tuple[int, ...]) -> Array:
    """Per-block values (grid shape) -> per-element along `axes` (sized as `shape` there)."""
    for ax in axes:
        if block[ax] > 1:
            values = jnp.repeat(values, block[ax], axis=ax)
            values = jax.lax.slice_in_dim(values, 0, shape[ax], axis=ax)
    return values


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
