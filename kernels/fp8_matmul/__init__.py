"""FP8 W8A8: per-token dynamic E4M3 activations x per-channel E4M3 weights."""

from jaxquant.kernels.fp8_matmul.api import fp8_matmul
from jaxquant.kernels.fp8_matmul.config import Fp8Config, default_config
from jaxquant.kernels.fp8_matmul.layouts import (
    LAYOUT_KN,
    LAYOUT_NK,
    LAYOUTS,
    Fp8Weights,
    as_fp8_weights,
    prepare_fp8_weights,
)
from jaxquant.kernels.fp8_matmul.reference import fp8_matmul_reference, quantize_per_token

__all__ = [
    "Fp8Config",
    "Fp8Weights",
    "LAYOUTS",
    "LAYOUT_KN",
    "LAYOUT_NK",
    "as_fp8_weights",
    "default_config",
    "fp8_matmul",
    "fp8_matmul_reference",
    "prepare_fp8_weights",
    "quantize_per_token",
]
