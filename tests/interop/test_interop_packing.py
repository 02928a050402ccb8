"""int32 packing against bit-by-bit references written from the formats' descriptions."""

from __future__ import annotations

import numpy as np
import pytest

from jaxquant.errors import JaxquantError
from jaxquant.interop import int32_packing as P


def dense_reference(codes: np.ndarray, bits: int) -> np.ndarray:
    """compressed-tensors: per row, runs of 32 codes; code i of a run at bit i*bits of the run."""
    rows, n = codes.shape
    n_words = -(-n * bits // 32)
    out = np.zeros((rows, n_words), np.int64)
    for r in range(rows):
        for i in range(n):
            run, pos = divmod(i, 32)
            for b in range(bits):
                if (int(codes[r, i]) >> b) & 1:
                    bit = run * 32 * bits + pos * bits + b
                    w, o = divmod(bit, 32)
                    if w < n_words:
                        out[r, w] |= 1 << o
    return out.astype(np.uint32).view(np.int32)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("n", [1, 31, 32, 45, 96])
def test_dense_matches_reference_and_round_trips(bits, n):
    rng = np.random.default_rng(bits * 100 + n)
    codes = rng.integers(0, 2**bits, size=(3, n)).astype(np.uint8)
    codes[0] = 2**bits - 1  # all bits set
    packed = P.pack_dense(codes, bits)
    np.testing.assert_array_equal(packed, dense_reference(codes, bits))
    np.testing.assert_array_equal(P.unpack_dense(packed, bits, n), codes)


def test_dense_wrong_word_count():
    with pytest.raises(JaxquantError, match="3 packed words cannot hold 32 4-bit codes"):
        P.unpack_dense(np.zeros((2, 3), np.int32), 4, 32)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("axis", [0, 1])
def test_sequential_reference(bits, axis):
    rng = np.random.default_rng(bits)
    k = 32 // bits
    codes = rng.integers(0, 2**bits, size=(2 * k, 3 * k)).astype(np.uint8)
    packed = P.pack_sequential(codes, bits, axis)
    moved = np.moveaxis(codes, axis, 0).astype(np.int64)
    want = np.zeros((moved.shape[0] // k,) + moved.shape[1:], np.int64)
    for w in range(want.shape[0]):
        for j in range(k):
            want[w] |= moved[w * k + j] << (bits * j)
    np.testing.assert_array_equal(packed, np.moveaxis(want.astype(np.uint32).view(np.int32), 0, axis))
    np.testing.assert_array_equal(P.unpack_sequential(packed, bits, axis), codes)


def test_awq_order():
    # element e of 8 goes to nibble AWQ_ORDER.index(e): codes 0..7 -> nibbles 0,2,4,6,1,3,5,7
    codes = np.arange(8, dtype=np.uint8)[None]
    word = int(P.pack_sequential(codes, 4, 1, order=P.AWQ_ORDER).view(np.uint32)[0, 0])
    assert [(word >> (4 * i)) & 0xF for i in range(8)] == [0, 2, 4, 6, 1, 3, 5, 7]
    np.testing.assert_array_equal(P.unpack_sequential(np.array([[word]], np.uint32).view(np.int32),
                                                      4, 1, order=P.AWQ_ORDER), codes)


def test_bad_bits_and_lengths():
    with pytest.raises(JaxquantError, match="bits=3 is not supported here"):
        P.pack_sequential(np.zeros((8, 8)), 3, 0)
    with pytest.raises(JaxquantError, match="not a multiple of 8"):
        P.pack_sequential(np.zeros((12, 8)), 4, 0)
