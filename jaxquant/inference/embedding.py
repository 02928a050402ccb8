"""Row lookups in a quantized embedding table without dequantizing the whole table."""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

from jaxquant.core.blocks import repeat_blocks
from jaxquant.core.qarray import QArray
from jaxquant.formats.registry import get_format


def take_rows(table: QArray, ids: Array, dtype) -> Array:
    """table: QArray of shape (V, D); ids: int array of any shape -> ids.shape + (D,) in dtype.

    Gathers the packed codes and the block scales of the requested rows only (codes packed along
    axis 1, the default for embeddings); other layouts dequantize the table first.
    """
    if table.ndim != 2 or table.meta.axis != 1:
        return jnp.take(table.dequantize(dtype), ids, axis=0)
    fmt = get_format(table.format)
    flat = ids.reshape(-1)
    q = jnp.take(table.qvalue, flat, axis=0)
    if fmt.codec.packed:
        from jaxquant.formats.packing import unpack_nibbles

        q = unpack_nibbles(q, 1, table.shape[1])
    values = fmt.codec.decode(q)  # (n, D)
    block = table.meta.block_shape
    rows = flat // block[0]
    shape = (flat.shape[0], table.shape[1])

    def per_element(grid_values: Array) -> Array:
        return repeat_blocks(jnp.take(grid_values, rows, axis=0), block, shape, (1,))

    scale = per_element(table.block_scale())
    if table.zero_point is not None:
        values = values - per_element(table.zero_point.astype(jnp.float32))
    out = values * scale
    if table.offset is not None:
        out = out + table.offset
    return out.astype(dtype).reshape(ids.shape + (table.shape[1],))
