"""Choosing each block's quantization range: min-max, percentile, or an MSE-optimal clip search.

All functions take the blocked view xb (see jaxquant.core.blocks) in f32 and return grid-shaped
(lo, hi) arrays, one range per block.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import Array

from jaxquant.core import blocks
from jaxquant.core.scales import Scales, decode_blocks, encode_blocks
from jaxquant.core.spec import Clipping
from jaxquant.formats.registry import QuantFormat

ScalesFn = Callable[[Array, Array], Scales]


def minmax_range(xb: Array) -> tuple[Array, Array]:
    axes = blocks.inner_axes(xb.ndim // 2)
    return (
        blocks.squeeze_inner(jnp.min(xb, axis=axes, keepdims=True)),
        blocks.squeeze_inner(jnp.max(xb, axis=axes, keepdims=True)),
    )


def percentile_range(xb: Array, percentile: float, symmetric: bool) -> tuple[Array, Array]:
    """Symmetric: (-p, p) with p the percentile of |x|; asymmetric: the low and high percentiles.
    NaN entries (the padding of ragged last blocks) are left out."""
    flat = blocks.move_inner_last(xb)
    if symmetric:
        a = jnp.nanpercentile(jnp.abs(flat), percentile, axis=-1)
        return -a, a
    return (
        jnp.nanpercentile(flat, 100.0 - percentile, axis=-1),
        jnp.nanpercentile(flat, percentile, axis=-1),
    )


def mse_range(
    xb: Array, fmt: QuantFormat, lo: Array, hi: Array, clipping: Clipping, scales_fn: ScalesFn
) -> tuple[Array, Array]:
    """Shrink (lo, hi) per block by the ratio in {1, 1 - m/g, ..., 1 - m} (m = max_shrink,
    g = grid) that minimizes sum |x - dequant(quant(x))|^norm over the block."""
    axes = blocks.inner_axes(xb.ndim // 2)

    def block_error(ratio: Array) -> Array:
        sc = scales_fn(lo * ratio, hi * ratio)
        err = jnp.abs(xb - decode_blocks(encode_blocks(xb, fmt, sc), fmt, sc)) ** clipping.norm
        return blocks.squeeze_inner(jnp.sum(err, axis=axes, keepdims=True))

    def body(i: Array, carry: tuple[Array, Array]) -> tuple[Array, Array]:
        best_err, best_ratio = carry
        ratio = 1.0 - clipping.max_shrink * i.astype(jnp.float32) / clipping.grid
        err = block_error(ratio)
        better = err < best_err
        return jnp.where(better, err, best_err), jnp.where(better, ratio, best_ratio)

    init = (block_error(jnp.float32(1.0)), jnp.ones_like(lo))
    _, ratio = jax.lax.fori_loop(1, clipping.grid + 1, body, init)
    return lo * ratio, hi * ratio


def block_range(
    xb: Array, fmt: QuantFormat, clipping: Clipping, scales_fn: ScalesFn
) -> tuple[Array, Array]:
    """The (lo, hi) range of every block under `clipping`."""
    if clipping.method == "percentile":
        return percentile_range(xb, clipping.percentile, symmetric=not fmt.asymmetric)
    lo, hi = minmax_range(xb)
    if clipping.method == "mse":
        return mse_range(xb, fmt, lo, hi, clipping, scales_fn)
    return lo, hi
