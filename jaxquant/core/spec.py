"""ArraySpec: everything needed to quantize one array, fully resolved against its shape."""

from __future__ import annotations

import dataclasses
from typing import Literal

Granularity = Literal["tensor", "channel", "group", "block", "token"]
ClipMethod = Literal["minmax", "percentile", "mse"]


@dataclasses.dataclass(frozen=True)
class Clipping:
    """How a block's range is chosen before computing its scale.

    minmax: the block's full range. percentile: the `percentile`-th percentile of |x| (or of x at
    both ends for asymmetric formats). mse: the clip ratio r in {1, 1 - s/grid, ..., 1 - max_shrink}
    that minimizes sum |x - dequant(quant(x))|^norm per block.
    signed: on the full-range integer grids (int4_full, ...: codes [-2^(b-1), 2^(b-1) - 1]) the
    scale maps the block's positive end onto the largest code and its negative end onto the
    smallest, whichever needs the larger scale: max(hi / 7, -lo / 8) at 4 bits, so nothing is
    clipped (the default amax / 7.5 clips a positive maximum by half a step). Other formats
    ignore it.
    """

    method: ClipMethod = "minmax"
    percentile: float = 99.9
    grid: int = 20
    max_shrink: float = 0.2
    norm: float = 2.0
    signed: bool = False


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """Resolved quantization of one array.

    format:      a name from jaxquant.formats.format_names().
    block_shape: block of elements sharing one scale; same rank as the array, divides its shape.
    axis:        the contraction axis: groups run along it and 4-bit codes pack along it.
    granularity: the user-facing name of block_shape, for display.
    scale_dtype: "float32" or "bfloat16" for "float" scale formats (ignored by MX/NVFP4).
    double_quant: quantize the block scales again (NF4: uint8 in blocks of 256).
    """

    format: str
    block_shape: tuple[int, ...]
    axis: int
    granularity: Granularity = "channel"
    scale_dtype: str = "float32"
    clipping: Clipping = Clipping()
    double_quant: bool = False


@dataclasses.dataclass(frozen=True)
class ActivationSpec:
    """How a layer's input activations are quantized at inference.

    format:      "int8", "fp8_e4m3", "fp8_e5m2" or "int4".
    granularity: "token" (one scale per row of the last axis) or "tensor".
    dynamic:     scales computed from each batch at run time; else static scales calibrated once.
    """

    format: str
    granularity: Literal["token", "tensor"] = "token"
    dynamic: bool = True
    clipping: Clipping = Clipping()
