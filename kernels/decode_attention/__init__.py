"""Decode attention over a quantized KV cache (INT8 / FP8 E4M3 / INT4 codes with per-token,
per-head (or per channel group) float32 scales, or a bf16/f32 cache)."""

from jaxquant.kernels.decode_attention.api import decode_attention, triton_supported
from jaxquant.kernels.decode_attention.config import DecodeAttentionConfig, default_config
from jaxquant.kernels.decode_attention.layouts import (
    CLI_FORMATS,
    KV_FORMATS,
    KVCacheSpec,
    as_spec,
    dequantize_rows,
    quantize_rows,
)
from jaxquant.kernels.decode_attention.reference import decode_attention_reference

__all__ = [
    "CLI_FORMATS",
    "DecodeAttentionConfig",
    "KVCacheSpec",
    "KV_FORMATS",
    "as_spec",
    "decode_attention",
    "decode_attention_reference",
    "default_config",
    "dequantize_rows",
    "quantize_rows",
    "triton_supported",
]
