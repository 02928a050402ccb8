"""Layout "wgmma": int4 weights pre-shuffled so that the Mosaic kernel's 128-bit shared-memory
loads land each thread's codes straight in its wgmma A-fragment registers.

The unit is a 64 x 128 tile (64 output channels, 128 K values: one warpgroup's wgmma A
operand for one K step). In Mosaic's WGMMA register layout, thread t = 32 w + l of the
warpgroup holds 32 registers of 2 bf16 each; register r = 2 cb + rh covers row
16 w + 8 rh + l // 4 and columns 8 cb + 2 (l % 4) + {0, 1}. The tile is stored as 1,024
32-bit words: word 4 h + i of thread t sits at h * 512 + 4 t + i (so a warp's 128-bit loads
are contiguous, conflict-free), and word j holds registers 4 j .. 4 j + 3, register 4 j + p
in nibbles p (first element) and 4 + p (second). One AND + XOR on the word shifted by 4 p
then gives register 4 j + p as two bf16 numbers 136 + q (two's-complement code q), with no
shuffle, permute or subtraction; the kernel removes the 136 with one more wgmma.

Array: qvalue int32 [N / 64, K / 128, 4, 256] (the 1,024 words of each tile), scale and
zero point as in layout "nk" (bf16 [ceil(K / g), N]).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

TILE_N, TILE_K = 64, 128
WORDS = TILE_N * TILE_K // 8  # 1,024 32-bit words per tile


@functools.cache
def word_sources() -> np.ndarray:
    """int64 [1024 words, 8 nibbles]: the flat index (row * 128 + col) in a 64 x 128 tile of
    the code held by each nibble of each stored word."""
    src = np.empty((2, 128, 4, 8), np.int64)  # [h, thread, i, nibble]
    for t in range(128):
        w, lane = divmod(t, 32)
        for r in range(32):
            cb, rh = divmod(r, 2)
            j, p = divmod(r, 4)
            h, i = divmod(j, 4)
            row = 16 * w + 8 * rh + lane // 4
            for e in range(2):
                src[h, t, i, p + 4 * e] = row * TILE_K + 8 * cb + 2 * (lane % 4) + e
    return src.reshape(WORDS, 8)


def pack(codes: jax.Array) -> jax.Array:
    """codes int4 or int8 [N, K] (two's complement in [-8, 7]), N % 64 == K % 128 == 0
    -> int32 [N / 64, K / 128, 4, 256]."""
    N, K = codes.shape
    if N % TILE_N or K % TILE_K:
        raise ValueError(f"layout 'wgmma' needs N % {TILE_N} == 0 and K % {TILE_K} == 0, got "
                         f"N={N}, K={K}")
    nib = (codes.astype(jnp.int32) & 0xF).astype(jnp.uint32)
    tiles = nib.reshape(N // TILE_N, TILE_N, K // TILE_K, TILE_K).transpose(0, 2, 1, 3)
    tiles = tiles.reshape(N // TILE_N, K // TILE_K, TILE_N * TILE_K)
    words = tiles[:, :, word_sources()]  # [nt, kt, 1024, 8]
    shifts = jnp.arange(8, dtype=jnp.uint32) * 4
    packed = jnp.sum(words << shifts, axis=-1, dtype=jnp.uint32)  # disjoint nibbles: sum == or
    return jax.lax.bitcast_convert_type(packed, jnp.int32).reshape(N // TILE_N, K // TILE_K, 4, 256)


def unpack(packed: jax.Array) -> jax.Array:
    """int32 [N / 64, K / 128, 4, 256] -> int8 codes [N, K] in [-8, 7] (inverse of `pack`)."""
    nt, kt = packed.shape[:2]
    words = jax.lax.bitcast_convert_type(packed.reshape(nt, kt, WORDS), jnp.uint32)
    nib = (words[..., None] >> (jnp.arange(8, dtype=jnp.uint32) * 4)) & 0xF  # [nt, kt, 1024, 8]
    inv = np.argsort(word_sources().reshape(-1))
    flat = nib.reshape(nt, kt, WORDS * 8)[:, :, inv]
    codes = flat.astype(jnp.int8)
    codes = jnp.where(codes >= 8, codes - 16, codes)
    return codes.reshape(nt, kt, TILE_N, TILE_K).transpose(0, 2, 1, 3).reshape(nt * TILE_N, kt * TILE_K)
