"""Routes quantized dots to the Pallas kernels in jaxquant.kernels when they apply.

W4A16: an int4/uint4 weight [K, N] grouped along K (K a multiple of the group), contracted on
axis 0 against the last axis of x, with bf16 activations (backend="pallas" also takes wider
ones, rounded to bf16). On GPU the kernel reads the packed codes and group scales and
dequantizes in registers (activations run in bf16, f32 accumulation); elsewhere, or for other
shapes, the caller falls back to XLA. backend="pallas" forces the kernel (Pallas interpret mode
off-GPU) and makes an inapplicable layer an error naming why. Weights in the "nk" GPU layout
(jaxquant.inference.gpu_layout.to_gpu_layout) run the Mosaic GPU kernel on Hopper GPUs and the
canonical ones the Pallas-Triton kernel.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from jaxquant.core.qarray import QArray
from jaxquant.errors import FormatError
from jaxquant.inference import dispatch


def _on_gpu() -> bool:
    return jax.devices()[0].platform == "gpu"


def _on_hopper() -> bool:
    from jaxquant.kernels._common import gpu_info

    info = gpu_info()
    return info is not None and info[2] >= 90


def w4a16_reason(x: Array, w: QArray, dims: Any, *, forced: bool = False) -> str | None:
    """None if the W4A16 kernel applies to this dot, else why not. The kernel computes with bf16
    activations: `auto` dispatch leaves wider activations (f32) to XLA so that the result keeps
    their precision; forced dispatch (backend="pallas") rounds them to bf16."""
    if not forced and x.dtype != jnp.bfloat16:
        return f"activations are {x.dtype}, the kernel takes bf16 (run the model in bf16)"
    if w.format not in ("int4", "uint4", "int4_full"):
        return f"format {w.format} is not a 4-bit integer format"
    if w.ndim != 2 or w.meta.axis != 0:
        return "the weight is not a 2-D [K, N] matrix contracted on axis 0"
    if dims != (((x.ndim - 1,), (0,)), ((), ())):
        return "the dot does not contract x's last axis with the weight's first"
    g, one = w.meta.block_shape
    k = w.shape[0]
    if one != 1 or g == k and w.meta.granularity != "group":
        return f"granularity {w.meta.granularity} is not group-wise along K"
    if k % g:
        return f"K={k} is not a multiple of the group size {g} (ragged last group)"
    if w.offset is not None or isinstance(w.scale, QArray):
        return "nested (double-quantized) scales"
    from jaxquant.kernels.w4a16 import mosaic_supported, triton_supported

    m = 1
    for d in x.shape[:-1]:
        m *= d
    if w.meta.layout == "nk":
        if not _on_hopper():
            return "layout 'nk' runs the Mosaic GPU kernel, which needs a Hopper GPU (sm_90)"
        return mosaic_supported(m, k, w.shape[1], g)
    if w.meta.layout != "canonical":
        return f"layout {w.meta.layout!r} is not one the kernels read"
    return triton_supported(m, k, w.shape[1], g)


def try_weight_only_kernel(
    x: Array, w: QArray, dims: Any, out_dtype: Any
) -> tuple[Array, str] | None:
    """(result, path name) from a Pallas kernel, or None when none applies (XLA fallback)."""
    backend = dispatch.current().backend
    if backend == "xla" or (backend == "auto" and not _on_gpu()):
        return None
    reason = w4a16_reason(x, w, dims, forced=backend == "pallas")
    if reason is not None:
        if backend == "pallas":
            raise FormatError(f"backend='pallas': no Pallas kernel for this layer: {reason}")
        return None
    from jaxquant.kernels.w4a16 import w4a16_matmul

    mosaic = w.meta.layout == "nk"
    out = w4a16_matmul(x.astype(jnp.bfloat16), w, group_size=w.meta.block_shape[0],
                       implementation="mosaic_gpu" if mosaic else "triton",
                       interpret=not _on_gpu())
    return out.astype(out_dtype), "mosaic-w4a16" if mosaic else "pallas-w4a16"
