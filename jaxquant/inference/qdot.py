"""The one quantized-dot entry point every intercepted layer calls.

    quantized_dot_general(x, w, dimension_numbers) ~= lax.dot_general(x, dequantize(w), ...)

Paths, chosen from the weight's metadata and the dispatch settings (jaxquant.inference.dispatch):
  weight-only   (meta.activation is None): a Pallas kernel where one applies (GPU, see
                jaxquant.kernels), else the weight is dequantized inside the jitted computation
                and XLA runs the dot in the activation dtype.
  W8A8 int      activations quantized per token (or static) to int8, int8 x int8 -> int32 dot,
                scales applied to the int32 result.
  W8A8 fp8      activations quantized to E4M3/E5M2, fp8 x fp8 dot with f32 accumulation.
Group-wise weight scales along the single contracting axis run as one dot per group (a batch
dimension) whose partial results are scaled and summed.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import Array, lax

from jaxquant.core import blocks
from jaxquant.core.activations import activation_values_dtype, quantize_activation
from jaxquant.core.qarray import QArray
from jaxquant.errors import FormatError
from jaxquant.formats.integer import IntCodec
from jaxquant.formats.registry import get_format
from jaxquant.inference import dispatch

DimNums = tuple[tuple[Sequence[int], Sequence[int]], tuple[Sequence[int], Sequence[int]]]


def _norm(dims: Sequence[int], ndim: int) -> tuple[int, ...]:
    return tuple(d % ndim for d in dims)


def _free(ndim: int, *used: tuple[int, ...]) -> tuple[int, ...]:
    taken = set().union(*used)
    return tuple(i for i in range(ndim) if i not in taken)


def quantized_dot_general(
    x: Array,
    w: QArray | Array,
    dimension_numbers: DimNums,
    *,
    out_dtype: Any = None,
    precision: Any = None,
    name: str = "",
) -> Array:
    """x @ w over `dimension_numbers` (as lax.dot_general: output dims are batch, x-free, w-free).

    x: float activations; w: QArray (or a plain array, passed to lax.dot_general unchanged).
    out_dtype defaults to x.dtype. `name` labels the layer in the dispatch report.
    """
    out_dtype = out_dtype or x.dtype
    if not isinstance(w, QArray):
        return lax.dot_general(x, w, dimension_numbers, precision=precision).astype(out_dtype)
    (xc, wc), (xb, wb) = dimension_numbers
    dims = ((_norm(xc, x.ndim), _norm(wc, w.ndim)), (_norm(xb, x.ndim), _norm(wb, w.ndim)))
    if w.input_smooth is not None:
        if len(dims[0][0]) != 1:
            raise FormatError("input_smooth needs a dot with one contracting axis")
        shape = [1] * x.ndim
        shape[dims[0][0][0]] = -1
        x = (x.astype(jnp.float32) / w.input_smooth.reshape(shape)).astype(x.dtype)
    observer = dispatch.current().observer
    if observer is not None and w.meta.activation is not None and not w.meta.activation.dynamic:
        from jaxquant.calibration.observers import HistogramObserver

        state = observer.get(id(w)) or HistogramObserver.init()
        observer[id(w)] = HistogramObserver.update(state, x)
    if w.meta.activation is not None and dispatch.current().allow_low_precision:
        dispatch.record(name, w, f"w8a8-{w.meta.activation.format}")
        return _low_precision_dot(x, w, dims, out_dtype)
    from jaxquant.inference import kernels_bridge

    out = kernels_bridge.try_weight_only_kernel(x, w, dims, out_dtype)
    if out is not None:
        dispatch.record(name, w, out[1])
        return out[0]
    dispatch.record(name, w, "xla-dequant")
    wd = w.dequantize(x.dtype)
    return lax.dot_general(
        x, wd, dims, precision=precision, preferred_element_type=jnp.float32
    ).astype(out_dtype)


def _weight_values(w: QArray) -> Array:
    """Weight codes as the dot operand: int8 for integer formats, the fp8 dtype for FP8."""
    fmt = get_format(w.format)
    if fmt.asymmetric or fmt.scale_kind != "float":
        raise FormatError(
            f"activation quantization needs a symmetric INT or FP8 weight with float scales, got "
            f"{w.format}; use a weight-only scheme for this format"
        )
    codes = w.codes()
    if isinstance(fmt.codec, IntCodec):
        return fmt.codec.decode(codes).astype(jnp.int8) if fmt.codec.packed else codes
    return codes


def _expand_free(scale_grid: Array, w: QArray, keep: tuple[int, ...]) -> Array:
    """Grid-shaped weight scales -> per-element scales along the `keep` axes (others left as is)."""
    return blocks.repeat_blocks(scale_grid, w.meta.block_shape, w.shape, keep)


def _low_precision_dot(x: Array, w: QArray, dims: DimNums, out_dtype: Any) -> Array:
    (xc, wc), (xb, wb) = dims
    spec = w.meta.activation
    xq, sx = quantize_activation(x, spec, xc, w.input_scale)
    wq = _weight_values(w)
    acc_dtype = jnp.int32 if xq.dtype == jnp.int8 else jnp.float32
    x_free, w_free = _free(x.ndim, xc, xb), _free(w.ndim, wc, wb)
    sw = _expand_free(w.block_scale(), w, wb + w_free)
    # sx: x-shaped with contracting dims of size 1 -> (batch..., x_free...)
    sx_t = jnp.transpose(sx, xb + x_free + xc).reshape(
        tuple(sx.shape[i] for i in xb + x_free) + (1,) * len(w_free)
    )
    grouped = any(sw.shape[a] > 1 for a in wc)
    if not grouped:
        acc = lax.dot_general(xq, wq, dims, preferred_element_type=acc_dtype)
        sw_t = jnp.transpose(sw, wb + w_free + wc).reshape(
            tuple(sw.shape[a] for a in wb) + (1,) * len(x_free) + tuple(sw.shape[a] for a in w_free)
        )
        return (acc.astype(jnp.float32) * sx_t * sw_t).astype(out_dtype)
    if len(wc) != 1:
        raise FormatError(
            f"group-wise weight scales with activation quantization need one contracting axis; "
            f"this dot contracts {len(wc)} axes. Use per-channel weights (granularity 'channel')"
        )
    (kx,), (kw,) = xc, wc
    g = w.meta.block_shape[kw]
    n_groups = -(-w.shape[kw] // g)
    pad = n_groups * g - w.shape[kw]  # a ragged last group is padded with zero codes
    if pad:
        xq = jnp.pad(xq, [(0, pad if i == kx else 0) for i in range(x.ndim)])
        wq = jnp.pad(wq, [(0, pad if i == kw else 0) for i in range(w.ndim)])
    xg = xq.reshape(x.shape[:kx] + (n_groups, g) + x.shape[kx + 1 :])
    wg = wq.reshape(w.shape[:kw] + (n_groups, g) + w.shape[kw + 1 :])
    shift_x = lambda a: a + (a > kx)  # noqa: E731  axes after the split move by one
    shift_w = lambda a: a + (a > kw)  # noqa: E731
    gdims = (
        ((kx + 1,), (kw + 1,)),
        ((kx,) + tuple(map(shift_x, xb)), (kw,) + tuple(map(shift_w, wb))),
    )
    acc = lax.dot_general(xg, wg, gdims, preferred_element_type=acc_dtype)  # (G, B.., Xf.., Wf..)
    sw_t = jnp.transpose(sw, (kw,) + wb + w_free).reshape(
        (n_groups,) + tuple(sw.shape[a] for a in wb) + (1,) * len(x_free)
        + tuple(sw.shape[a] for a in w_free)
    )
    out = jnp.sum(acc.astype(jnp.float32) * sw_t, axis=0)
    return (out * sx_t).astype(out_dtype)
