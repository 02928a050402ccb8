"""GPU inference layouts for quantized parameter trees.

`to_gpu_layout(params)` rewrites, once at load time, every 4-bit group-wise weight that the
Mosaic GPU W4A16 kernel (jaxquant.kernels.w4a16.mosaic_gpu, Hopper) can read into the "nk"
layout (int4 [N, K], K-contiguous; see jaxquant.core.qarray), so that no per-call relayout
is needed. Leaves the kernel cannot read stay as they are. The result computes the same
function on any backend (dequantize() understands both layouts); `to_canonical` undoes it,
e.g. before saving a checkpoint or exporting.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxquant.core.qarray import LAYOUT_NK, QArray, is_qarray
from jaxquant.formats.packing import pack_nibbles
from jaxquant.kernels.w4a16.layouts import Int4Weights, to_nk
from jaxquant.kernels.w4a16.mosaic_gpu import supported

FOUR_BIT_INT = ("int4", "uint4", "int4_full")


def nk_reason(w: QArray) -> str | None:
    """None if `w` can take the "nk" layout, else why not."""
    if w.format not in FOUR_BIT_INT:
        return f"format {w.format} is not a 4-bit integer format"
    if w.ndim != 2 or w.meta.axis != 0:
        return "not a 2-D [K, N] weight contracted on axis 0"
    if w.meta.activation is not None:
        return "activations are quantized (W4A8), not weight-only"
    if w.offset is not None or isinstance(w.scale, QArray):
        return "nested (double-quantized) scales"
    g, one = w.meta.block_shape
    k, n = w.shape
    if one != 1 or w.meta.granularity != "group":
        return f"granularity {w.meta.granularity} is not group-wise along K"
    if k % g:
        return f"K={k} is not a multiple of the group size {g}"
    return supported(1, k, n, g)


def _to_nk(w: QArray) -> QArray:
    k = w.shape[0]
    nk = to_nk(Int4Weights(w.qvalue, w.scale, w.zero_point), k)
    meta = dataclasses.replace(w.meta, layout=LAYOUT_NK)
    return dataclasses.replace(w, qvalue=nk.qvalue, scale=nk.scale, zero_point=nk.zero_point,
                               meta=meta)


def _to_canonical(w: QArray) -> QArray:
    codes = w.codes()  # canonical uint8 codes [K, N]
    zp = None
    if w.zero_point is not None:
        zp = (w.zero_point.astype(jnp.float32) + 8.0).astype(jnp.uint8)
    meta = dataclasses.replace(w.meta, layout="canonical")
    return dataclasses.replace(w, qvalue=pack_nibbles(codes, 0), zero_point=zp, meta=meta)


def to_gpu_layout(params: Any) -> Any:
    """A copy of `params` with every QArray that the Mosaic W4A16 kernel reads in layout "nk"
    (scales become bf16). Call it once after quantizing or restoring, before serving."""
    def f(x):
        if is_qarray(x) and x.meta.layout != LAYOUT_NK and nk_reason(x) is None:
            return jax.jit(_to_nk)(x)
        return x

    return jax.tree_util.tree_map(f, params, is_leaf=is_qarray)


def to_canonical(params: Any) -> Any:
    """Undo to_gpu_layout: every "nk" QArray back to the canonical packing."""
    def f(x):
        if is_qarray(x) and x.meta.layout == LAYOUT_NK:
            return jax.jit(_to_canonical)(x)
        return x

    return jax.tree_util.tree_map(f, params, is_leaf=is_qarray)
