"""W4A16: bf16 activations x int4 group-quantized weights (Pallas-Triton and Mosaic GPU
kernels + XLA)."""

from jaxquant.kernels.w4a16.api import mosaic_supported, triton_supported, w4a16_matmul
from jaxquant.kernels.w4a16.config import W4A16Config, default_config
from jaxquant.kernels.w4a16.layouts import (
    LAYOUT_CANONICAL, LAYOUT_NK, LAYOUTS, Int4Weights, as_int4_weights, to_nk)
from jaxquant.kernels.w4a16.mosaic_gpu import MosaicConfig
from jaxquant.kernels.w4a16.reference import dequantize, w4a16_matmul_reference

__all__ = [
    "Int4Weights",
    "LAYOUTS",
    "LAYOUT_CANONICAL",
    "LAYOUT_NK",
    "MosaicConfig",
    "W4A16Config",
    "as_int4_weights",
    "default_config",
    "dequantize",
    "mosaic_supported",
    "to_nk",
    "triton_supported",
    "w4a16_matmul",
    "w4a16_matmul_reference",
]
