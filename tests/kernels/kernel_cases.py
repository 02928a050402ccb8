"""One case list shared by every backend of the kernel tests, and float64 NumPy references
written from the documented layouts only (no kernel code imported)."""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np


@dataclasses.dataclass(frozen=True)
class W4Case:
    name: str
    M: int
    K: int
    N: int
    group: int
    asym: bool = False
    special: str = ""  # "", "zero_groups", "outliers"

    def __str__(self):
        return self.name


W4_CASES = [
    W4Case("decode_m1_g128", 1, 256, 64, 128),
    W4Case("ragged_m3_g64_asym", 3, 192, 48, 64, asym=True),
    W4Case("k_not_block_g32", 5, 160, 40, 32),  # K % block_k != 0, N % block_n != 0
    W4Case("odd_k_ragged_group_asym", 2, 97, 33, 32, asym=True),  # ceil(K/2) rows, last group of 1
    W4Case("zero_groups_asym", 4, 256, 32, 64, asym=True, special="zero_groups"),
    W4Case("zero_groups_sym", 4, 256, 32, 32, special="zero_groups"),
    W4Case("outliers_g128", 16, 384, 64, 128, special="outliers"),
    W4Case("m40_g64", 40, 128, 64, 64),
]


# shapes the Mosaic GPU kernel takes (K a multiple of 128, N of 64, groups 64 / 128k): decode,
# ragged M (rows past M come from TMA's zero fill), several M tiles, split-K, the bad cases
W4_MOSAIC_CASES = [
    W4Case("mosaic_m1_g128", 1, 512, 128, 128),
    W4Case("mosaic_m5_g64_asym", 5, 256, 64, 64, asym=True),
    W4Case("mosaic_m16_g256", 16, 1024, 192, 256),
    W4Case("mosaic_m33_g128_asym", 33, 384, 128, 128, asym=True),
    W4Case("mosaic_m130_g128", 130, 256, 128, 128),  # two M tiles, the second ragged
    W4Case("mosaic_zero_groups_asym", 4, 512, 64, 128, asym=True, special="zero_groups"),
    W4Case("mosaic_outliers_g64", 16, 512, 64, 64, special="outliers"),
]


def make_w4(case: W4Case, seed: int = 0):
    """(x float32 values exactly representable in bf16 [M, K], qvalue uint8 [ceil(K/2), N],
    scale float32 (bf16-representable) [G, N], zero_point uint8 [G, N] or None)."""
    rng = np.random.default_rng(seed)
    M, K, N, g = case.M, case.K, case.N, case.group
    G = -(-K // g)
    codes = rng.integers(0, 16, (K, N)).astype(np.uint8)
    scale = rng.uniform(0.002, 0.05, (G, N)).astype(np.float32)
    zp = rng.integers(0, 16, (G, N)).astype(np.uint8) if case.asym else None
    x = rng.standard_normal((M, K)).astype(np.float32)
    if case.special == "zero_groups":
        # group 1: every code equals the zero point (or 0 for symmetric), group 2: scale 0
        rows = slice(g, min(2 * g, K))
        codes[rows] = zp[1][None, :] if case.asym else 0
        scale[2 % G] = 0.0
    if case.special == "outliers":
        x[rng.integers(0, M, 6), rng.integers(0, K, 6)] = rng.choice([-1, 1], 6) * 3e3
        scale[rng.integers(0, G, 4), rng.integers(0, N, 4)] = 40.0
    x = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    scale = scale.astype(ml_dtypes.bfloat16).astype(np.float32)
    if K % 2:
        codes = np.concatenate([codes, np.zeros((1, N), np.uint8)])
    qvalue = (codes[0::2] & 0xF) | ((codes[1::2] & 0xF) << 4)
    return x, qvalue.astype(np.uint8), scale, zp


def w4_reference64(x, qvalue, scale, zp, K, g):
    """float64 x @ W with W[k, n] = (decode(code[k, n]) - zp[k // g, n]) * scale[k // g, n]."""
    lo = (qvalue & 0xF).astype(np.int64)
    hi = (qvalue >> 4).astype(np.int64)
    codes = np.empty((2 * qvalue.shape[0], qvalue.shape[1]), np.int64)
    codes[0::2], codes[1::2] = lo, hi
    codes = codes[:K]
    gi = np.arange(K) // g
    if zp is None:
        vals = np.where(codes >= 8, codes - 16, codes)
    else:
        vals = codes - zp.astype(np.int64)[gi]
    w = vals.astype(np.float64) * scale.astype(np.float64)[gi]
    return x.astype(np.float64) @ w


@dataclasses.dataclass(frozen=True)
class Fp8Case:
    name: str
    M: int
    K: int
    N: int
    layout: str = "kn"
    special: str = ""  # "", "zero_row", "outliers"

    def __str__(self):
        return self.name


FP8_CASES = [
    Fp8Case("ragged_m5", 5, 128, 64),
    Fp8Case("k_not_block_nk", 20, 200, 72, layout="nk"),
    Fp8Case("zero_row", 8, 96, 40, special="zero_row"),
    Fp8Case("outliers_nk", 33, 256, 64, layout="nk", special="outliers"),
]


def make_fp8(case: Fp8Case, seed: int = 0):
    """(x bf16-representable float32 [M, K], wq float32 values of E4M3 [K, N], sw f32 [N])."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((case.M, case.K)).astype(np.float32)
    if case.special == "zero_row":
        x[2] = 0.0
    if case.special == "outliers":
        x[rng.integers(0, case.M, 5), rng.integers(0, case.K, 5)] = 2e3
    x = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    w = rng.standard_normal((case.K, case.N))
    sw = (np.abs(w).max(axis=0) / 448.0).astype(np.float32)
    wq = (w / sw).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
    return x, wq, sw


def fp8_reference64(x, wq, sw):
    """float64 product of the per-token-quantized activations and the dequantized weights:
    sx = amax(row) / 448 (1 if zero), xq = e4m3(x / sx) (round to nearest even)."""
    amax = np.abs(x.astype(np.float64)).max(axis=1)
    sx = np.where(amax > 0, (amax / 448.0).astype(np.float32), 1.0).astype(np.float32)
    xq = (x / sx[:, None]).astype(ml_dtypes.float8_e4m3fn).astype(np.float64)
    return (xq * sx.astype(np.float64)[:, None]) @ (wq.astype(np.float64) * sw.astype(np.float64)[None, :])
