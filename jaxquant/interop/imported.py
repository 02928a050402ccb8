"""What an importer returns: quantized linear layers as QArrays plus the other tensors."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxquant.checkpoint.manifest import nest
from jaxquant.core.qarray import QArray
from jaxquant.interop.hf_names import from_hf


@dataclasses.dataclass
class ImportedLinear:
    """One quantized linear layer as a Flax kernel: weight QArray [in, out] (axis 0).

    input_perm: None, or int32 [in] for GPTQ act-order: the kernel's rows are the original input
    rows in this order (groups contiguous), so y = x[..., input_perm] @ weight.dequantize().
    """

    weight: QArray
    input_perm: np.ndarray | None = None

    def dequantize(self, dtype: Any = None) -> np.ndarray:
        """The float kernel [in, out] in the original input order (dtype: the logical one)."""
        w = np.asarray(self.weight.dequantize(dtype))
        if self.input_perm is None:
            return w
        out = np.empty_like(w)
        out[self.input_perm] = w
        return out


@dataclasses.dataclass
class ImportedCheckpoint:
    """format: "compressed-tensors", "gptq" or "awq"; layers keyed by the HF module name
    ("model.layers.0.mlp.up_proj"); tensors: every other tensor (HF name, HF layout); config:
    the checkpoint's quantization config; extra: jaxquant's own keys (base model, recipe)."""

    format: str
    layers: dict[str, ImportedLinear]
    tensors: dict[str, np.ndarray]
    config: dict
    extra: dict = dataclasses.field(default_factory=dict)

    def to_params(self) -> dict:
        """A jaxquant parameter tree (HF Llama names map to the reference Llama's paths):
        quantized layers as QArray kernels; act-order GPTQ layers dequantized, since a Dense
        layer cannot permute its input."""
        flat: dict[str, Any] = {}
        for prefix, layer in self.layers.items():
            path, _ = from_hf(f"{prefix}.weight", 2)
            flat[path] = layer.weight if layer.input_perm is None else layer.dequantize()
        for name, arr in self.tensors.items():
            path, kernel = from_hf(name, arr.ndim)
            flat[path] = np.ascontiguousarray(arr.T) if kernel else arr
        return nest(flat)
