"""Packing b-bit unsigned codes into int32 words, as the PyTorch-ecosystem formats do.

All functions are pure numpy on unsigned codes (values in [0, 2^bits - 1]); the formats'
offsets (compressed-tensors adds 2^(bits-1), GPTQ v1 stores zero - 1) are the callers' business.

dense (compressed-tensors pack_to_int32, v0.20): along the last axis, each run of 32 codes fills
    exactly `bits` words; code i of a run sits at bit i * bits of the run (a code may straddle
    two words, low bits first); the row is zero-padded to a multiple of 32 codes and then cut
    to ceil(n * bits / 32) words.
sequential (AutoGPTQ qweight/qzeros, bits in {2, 4, 8}): word w holds codes
    w * k ... w * k + k - 1 (k = 32 / bits), code j at bit j * bits, along `axis`.
awq (AutoAWQ WQLinear_GEMM, 4 bits): like sequential along the last axis with k = 8, but
    the code at nibble i of a word is element AWQ_ORDER[i] of its 8.
"""

from __future__ import annotations

import numpy as np

from jaxquant.errors import JaxquantError

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def _check_bits(bits: int, allowed: tuple[int, ...]) -> None:
    if bits not in allowed:
        raise JaxquantError(f"bits={bits} is not supported here; use one of {allowed}")


def dense_words(n: int, bits: int) -> int:
    """int32 words a row of n codes takes in the dense layout."""
    return -(-n * bits // 32)


def pack_dense(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint codes [..., n] -> int32 [..., ceil(n * bits / 32)] (dense layout)."""
    _check_bits(bits, tuple(range(1, 9)))
    codes = np.asarray(codes).astype(np.uint64)
    n = codes.shape[-1]
    runs = -(-n // 32)
    padded = np.zeros(codes.shape[:-1] + (runs * 32,), np.uint64)
    padded[..., :n] = codes & ((1 << bits) - 1)
    g = padded.reshape(codes.shape[:-1] + (runs, 32))
    # a run is a 32 * bits-bit little-endian integer; build it 64 bits at a time via bit positions
    out = np.zeros(codes.shape[:-1] + (runs, bits), np.uint64)
    for i in range(32):
        start = i * bits
        w, off = divmod(start, 32)
        out[..., w] |= (g[..., i] << np.uint64(off)) & np.uint64(0xFFFFFFFF)
        spill = off + bits - 32
        if spill > 0:
            out[..., w + 1] |= g[..., i] >> np.uint64(bits - spill)
    words = out.reshape(codes.shape[:-1] + (runs * bits,))[..., :dense_words(n, bits)]
    return words.astype(np.uint32).view(np.int32)


def unpack_dense(words: np.ndarray, bits: int, n: int) -> np.ndarray:
    """int32 [..., ceil(n * bits / 32)] -> uint8 codes [..., n] (dense layout)."""
    _check_bits(bits, tuple(range(1, 9)))
    words = np.asarray(words)
    if words.shape[-1] != dense_words(n, bits):
        raise JaxquantError(f"{words.shape[-1]} packed words cannot hold {n} {bits}-bit codes "
                            f"(needs {dense_words(n, bits)})")
    runs = -(-n // 32)
    padded = np.zeros(words.shape[:-1] + (runs * bits,), np.uint64)
    padded[..., :words.shape[-1]] = words.view(np.uint32)
    g = padded.reshape(words.shape[:-1] + (runs, bits))
    mask = np.uint64((1 << bits) - 1)
    out = np.zeros(words.shape[:-1] + (runs, 32), np.uint8)
    for i in range(32):
        w, off = divmod(i * bits, 32)
        v = g[..., w] >> np.uint64(off)
        if off + bits > 32:
            v |= g[..., w + 1] << np.uint64(32 - off)
        out[..., i] = (v & mask).astype(np.uint8)
    return out.reshape(words.shape[:-1] + (runs * 32,))[..., :n]


def pack_sequential(codes: np.ndarray, bits: int, axis: int, order: tuple[int, ...] | None = None
                    ) -> np.ndarray:
    """uint codes -> int32 with the size along `axis` divided by 32 / bits (must divide);
    `order[i]` is which of a word's codes sits at slot i (None: slot i holds code i)."""
    _check_bits(bits, (2, 4, 8))
    k = 32 // bits
    codes = np.moveaxis(np.asarray(codes).astype(np.uint32), axis, -1)
    if codes.shape[-1] % k:
        raise JaxquantError(f"{codes.shape[-1]} codes along axis {axis} are not a multiple of "
                            f"{k} ({bits}-bit codes per int32)")
    g = codes.reshape(codes.shape[:-1] + (-1, k)) & np.uint32((1 << bits) - 1)
    order = order or tuple(range(k))
    out = np.zeros(g.shape[:-1], np.uint32)
    for slot, j in enumerate(order):
        out |= g[..., j] << np.uint32(slot * bits)
    return np.moveaxis(out.view(np.int32), -1, axis)


def unpack_sequential(words: np.ndarray, bits: int, axis: int,
                      order: tuple[int, ...] | None = None) -> np.ndarray:
    """Inverse of pack_sequential: int32 -> uint8 codes, size along `axis` times 32 / bits."""
    _check_bits(bits, (2, 4, 8))
    k = 32 // bits
    w = np.moveaxis(np.asarray(words), axis, -1).view(np.uint32)
    order = order or tuple(range(k))
    out = np.zeros(w.shape + (k,), np.uint8)
    for slot, j in enumerate(order):
        out[..., j] = ((w >> np.uint32(slot * bits)) & np.uint32((1 << bits) - 1)).astype(np.uint8)
    return np.moveaxis(out.reshape(w.shape[:-1] + (-1,)), -1, axis)
