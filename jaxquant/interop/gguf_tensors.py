"""GGUF (llama.cpp) tensors as QArrays where the format maps exactly, else dequantized.

Exact mappings (no min/offset term, so value = scale_block * integer):
  Q8_0  blocks of 32: f16 d, int8 q          -> "int8", block (1, 32), scale d
  Q4_0  blocks of 32: f16 d, nibble n; d*(n-8) -> "int4", block (1, 32), scale d, code n - 8
  Q5_0  blocks of 32: f16 d, 5-bit n; d*(n-16) -> "int8", block (1, 32), code n - 16
  Q6_K  super-blocks of 256: f16 d, int8 sc[16] (one per 16), 6-bit n; d*sc*(n-32)
                                              -> "int8", block (1, 16), scale d*sc (exact in f32)
Block scales are read from the raw block bytes; codes are value / scale of the gguf package's
own dequantization, and the QArray's dequantization is checked bit-for-bit against it (any
mismatch falls back to the float values). Q4_1, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K carry a per-block
minimum (value = d * q + m), which jaxquant's integer zero-points cannot express exactly: those,
and F16/BF16/F32, are returned dequantized (float32 numpy). Layout: GGUF's numpy order [rows,
cols] (PyTorch [out, in] for matrices), blocks along the last axis; layout.transpose2d gives a
Flax kernel.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from jaxquant.core.qarray import QArray
from jaxquant.interop.layout import make_qarray
from jaxquant.models.gguf_loader import GGUFError, open_gguf


@dataclasses.dataclass(frozen=True)
class _Exact:
    block: int  # elements per scale
    fmt: str
    block_bytes: int
    scales: Any  # raw blocks uint8 [rows, n_super, block_bytes] -> f32 [rows, n_scales]


def _f16_at(raw: np.ndarray, start: int) -> np.ndarray:
    return raw[..., start:start + 2].copy().view(np.float16)[..., 0].astype(np.float32)


def _q6k_scales(raw: np.ndarray) -> np.ndarray:
    d = _f16_at(raw, 208)[..., None]
    sc = raw[..., 192:208].view(np.int8).astype(np.float32)
    return (d * sc).reshape(raw.shape[0], -1)


EXACT = {
    "Q8_0": _Exact(32, "int8", 34, lambda raw: _f16_at(raw, 0)),
    "Q4_0": _Exact(32, "int4", 18, lambda raw: _f16_at(raw, 0)),
    "Q5_0": _Exact(32, "int8", 22, lambda raw: _f16_at(raw, 0)),
    "Q6_K": _Exact(16, "int8", 210, _q6k_scales),
}


def import_tensor(t: Any, where: str) -> QArray | np.ndarray:
    """One gguf.ReaderTensor -> QArray (exact types) or float32 numpy, numpy shape [rows, cols]."""
    import gguf

    shape = tuple(int(s) for s in reversed(t.shape))
    try:
        values = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
    except Exception as e:  # unsupported type, damaged data
        raise GGUFError(f"{where}: tensor {t.name!r} ({t.tensor_type.name}) cannot be "
                        f"decoded: {type(e).__name__}: {e}") from None
    values = values.reshape(shape)
    spec = EXACT.get(t.tensor_type.name)
    if spec is None or len(shape) != 2:
        return values
    rows, cols = shape
    raw = np.asarray(t.data, np.uint8).reshape(rows, -1)
    per_super = gguf.GGML_QUANT_SIZES[t.tensor_type][0]
    raw = raw.reshape(rows, cols // per_super, spec.block_bytes)
    scale = spec.scales(raw).reshape(rows, cols // spec.block)
    s = np.repeat(scale, spec.block, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        codes = np.where(s != 0, np.rint(values / s), 0).astype(np.int32)
    q = make_qarray(codes, scale, None, spec.fmt, (1, spec.block), 1, "float32", t.name)
    if not np.array_equal(np.asarray(q.dequantize()), values):
        return values
    return q


def import_gguf(path: str | os.PathLike, names: list[str] | None = None
                ) -> dict[str, QArray | np.ndarray]:
    """Tensors of a GGUF file by name (all, or `names`), one at a time."""
    reader = open_gguf(path)
    tensors = {t.name: t for t in reader.tensors}
    missing = [n for n in names or [] if n not in tensors]
    if missing:
        raise GGUFError(f"{path}: no tensor {missing[0]!r} in the file")
    return {n: import_tensor(tensors[n], str(path)) for n in (names or list(tensors))}
