"""W4A16: bf16 activations x int4 group-quantized weights (Pallas-Triton kernel + XLA)."""

from jaxquant.kernels.w4a16.api import triton_supported, w4a16_matmul
from jaxquant.kernels.w4a16.config import W4A16Config, default_config
from jaxquant.kernels.w4a16.layouts import LAYOUT_CANONICAL, LAYOUTS, Int4Weights, as_int4_weights
from jaxquant.kernels.w4a16.reference import dequantize, w4a16_matmul_reference

__all__ = [
    "Int4Weights",
    "LAYOUTS",
    "LAYOUT_CANONICAL",
    "W4A16Config",
    "as_int4_weights",
    "default_config",
    "dequantize",
    "triton_supported",
    "w4a16_matmul",
    "w4a16_matmul_reference",
]
