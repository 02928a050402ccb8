"""Float64 NumPy references for the quantized KV cache: the codec and decode attention."""

from __future__ import annotations

import ml_dtypes
import numpy as np

QMAX = {"int8": 127.0, "int4": 7.0, "fp8": 448.0}


def quantize_np(x: np.ndarray, fmt: str, group: int) -> tuple[np.ndarray, np.ndarray]:
    """x [..., D] -> (dequantized float64 [..., D], scales float64 [..., D / group])."""
    x = np.asarray(x, np.float64)
    xg = x.reshape(*x.shape[:-1], -1, group)
    scale = np.max(np.abs(xg), axis=-1, keepdims=True) / QMAX[fmt]
    safe = np.where(scale == 0, 1.0, scale)
    y = np.clip(xg / safe, -QMAX[fmt], QMAX[fmt])
    if fmt == "fp8":
        codes = y.astype(ml_dtypes.float8_e4m3fn).astype(np.float64)
    else:
        codes = np.round(y)
    return (codes * scale).reshape(x.shape), scale[..., 0]


def attention_np(q: np.ndarray, k: np.ndarray, v: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """q [B, H, D], k, v [B, Hkv, S, D] float64, lengths [B] -> [B, H, D] (zeros if empty)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    B, H, D = q.shape
    hkv = k.shape[1]
    out = np.zeros((B, H, D))
    for b in range(B):
        n = int(lengths[b])
        if n == 0:
            continue
        for h in range(H):
            kh, vh = k[b, h // (H // hkv), :n], v[b, h // (H // hkv), :n]
            s = kh @ q[b, h] / np.sqrt(D)
            p = np.exp(s - s.max())
            out[b, h] = p @ vh / p.sum()
    return out
