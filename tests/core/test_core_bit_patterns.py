"""Hand-computed codes and bit patterns: E2M1, E8M0, MXFP4, MXFP8, NVFP4, FP8, NF4, INT nibbles,
the asymmetric worked example, and the nibble packing layout. Every expected value below is
written out by hand from the format definitions, not computed by the code under test."""

from __future__ import annotations

import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy_reference as R  # noqa: E402

import jaxquant as jq  # noqa: E402
from jaxquant.core.spec import ArraySpec  # noqa: E402
from jaxquant.formats import (  # noqa: E402
    E2M1_VALUES,
    NF4_LEVELS,
    e8m0_decode,
    e8m0_encode,
    e8m0_exponent,
    pack_nibbles,
    unpack_nibbles,
)
from jaxquant.formats.packing import from_signed_nibble, to_signed_nibble  # noqa: E402


def e2m1(values):
    return np.asarray(jq.get_format("fp4_e2m1").codec.encode(jnp.asarray(values, jnp.float32)))


# ------------------------------------------------------------------------------------- E2M1 --

def test_e2m1_codes_by_hand():
    # value -> (nearest E2M1 value, code = sign << 3 | index into {0, .5, 1, 1.5, 2, 3, 4, 6})
    cases = [
        (0.0, 0b0000),
        (0.25, 0b0000),    # tie between 0 (index 0) and 0.5 (index 1): even index -> 0
        (0.5, 0b0001),
        (0.75, 0b0010),    # tie between 0.5 (1) and 1.0 (2): even -> 1.0
        (1.25, 0b0010),    # tie between 1.0 (2) and 1.5 (3): even -> 1.0
        (1.75, 0b0100),    # tie between 1.5 (3) and 2.0 (4): even -> 2.0
        (2.5, 0b0100),     # tie between 2 (4) and 3 (5): even -> 2.0
        (3.5, 0b0110),     # tie between 3 (5) and 4 (6): even -> 4.0
        (5.0, 0b0110),     # tie between 4 (6) and 6 (7): even -> 4.0
        (5.5, 0b0111),
        (6.0, 0b0111),
        (7.0, 0b0111),     # saturates at 6
        (1e9, 0b0111),
        (-6.0, 0b1111),
        (-0.75, 0b1010),
        (-3.2, 0b1101),    # nearest 3.0 (index 5), negative
        (-0.1, 0b1000),    # rounds to zero; the sign bit is kept (-0)
        (0.26, 0b0001),    # just past the 0.25 midpoint
    ]
    got = e2m1([v for v, _ in cases])
    assert got.dtype == np.uint8
    assert got.tolist() == [c for _, c in cases]


def test_e2m1_decode_table():
    codec = jq.get_format("fp4_e2m1").codec
    got = np.asarray(codec.decode(jnp.arange(16, dtype=jnp.uint8)))
    want = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(E2M1_VALUES, want)
    assert np.signbit(got[8])


def test_e2m1_matches_reference_on_a_dense_sweep():
    y = np.linspace(-8, 8, 64001).astype(np.float32)  # includes every midpoint exactly
    np.testing.assert_array_equal(e2m1(y), R.e2m1_encode(y.astype(np.float64)))


# ------------------------------------------------------------------------------------- E8M0 --

def test_e8m0_by_hand():
    # E8M0: code = exponent + 127; 1.0 = 2^0 -> 127, 2^-3 -> 124, 2^127 -> 254, 2^-127 -> 0
    codes = np.asarray(e8m0_encode(jnp.array([0, -3, 127, -127, 1], jnp.int32)))
    assert codes.dtype == np.uint8
    assert codes.tolist() == [127, 124, 254, 0, 128]
    dec = np.asarray(e8m0_decode(jnp.array([127, 124, 254, 128, 1, 255], jnp.uint8)))
    np.testing.assert_array_equal(dec[:5], [1.0, 0.125, 2.0**127, 2.0, 2.0**-126])
    assert np.isnan(dec[5])  # 255 is NaN


def test_e8m0_exponent_by_hand():
    # floor(log2(amax)) - emax_elem
    amax = jnp.array([1.0, 0.125, 5.5, 6.0, 8.0, 0.1, 7.99, 448.0, 0.0, 2.0**-126], jnp.float32)
    emax = 2  # E2M1
    got = np.asarray(e8m0_exponent(amax, emax)).tolist()
    want = [0 - 2, -3 - 2, 2 - 2, 2 - 2, 3 - 2, -4 - 2, 2 - 2, 8 - 2, -127, -127]  # last clamps
    assert got == want
    assert np.asarray(e8m0_exponent(jnp.array([1.0, 448.0, 500.0]), 8)).tolist() == [-8, 0, 0]
    # "E8M0 of 1.0 -> 127, of 2^-3 -> 124" for an element format with emax 0
    assert np.asarray(e8m0_encode(e8m0_exponent(jnp.array([1.0, 0.125]), 0))).tolist() == [127, 124]


# -------------------------------------------------------------------------------------- MX --

def test_mxfp4_blocks_by_hand():
    b0 = np.zeros(32, np.float32)
    b0[:8] = [5.5, 0.25, -1.25, 2.5, 3.5, 0.75, -0.0, 1.0]
    b1 = np.zeros(32, np.float32)
    b1[:4] = [0.1, -0.05, 0.03125, 0.01]
    x = np.concatenate([b0, b1])
    q = jq.quantize_array(jnp.asarray(x), ArraySpec("mxfp4", (32,), 0, "group"))
    # block 0: amax 5.5 -> floor(log2 5.5) = 2, minus emax 2 -> shared exponent 0 -> E8M0 127
    # block 1: amax 0.1 -> floor(log2 0.1) = -4, minus 2 -> -6 -> E8M0 121, scale 1/64
    assert np.asarray(q.scale).tolist() == [127, 121]
    codes = np.asarray(q.codes())
    # 5.5 -> 6 (0111); 0.25 -> 0 (tie, even); -1.25 -> -1.0 (1010); 2.5 -> 2 (0100);
    # 3.5 -> 4 (0110); 0.75 -> 1.0 (0010); -0.0 -> 1000; 1.0 -> 0010
    assert codes[:8].tolist() == [0b0111, 0b0000, 0b1010, 0b0100, 0b0110, 0b0010, 0b1000, 0b0010]
    # x * 64: 6.4 -> saturates at 6 (0111); -3.2 -> -3 (1101); 2.0 -> 0100; 0.64 -> 0.5 (0001)
    assert codes[32:36].tolist() == [0b0111, 0b1101, 0b0100, 0b0001]
    assert (codes[8:32] == 0).all() and (codes[36:] == 0).all()
    # packed: low nibble = even element, high nibble = odd element
    packed = np.asarray(q.qvalue)
    assert packed.shape == (32,) and packed.dtype == np.uint8
    assert packed[:4].tolist() == [0x07, 0x4A, 0x26, 0x28]
    assert packed[16:18].tolist() == [0xD7, 0x14]
    deq = np.asarray(q.dequantize())
    np.testing.assert_array_equal(deq[:8], [6.0, 0.0, -1.0, 2.0, 4.0, 1.0, -0.0, 1.0])
    np.testing.assert_array_equal(deq[32:36], [6 / 64, -3 / 64, 2 / 64, 0.5 / 64])
    assert q.nbytes == 32 + 2  # 64 nibbles + two E8M0 bytes: 4.25 bits per element


def test_mxfp8_block_by_hand():
    x = np.zeros(32, np.float32)
    x[:3] = [1.0, 0.3, -0.5]
    q = jq.quantize_array(jnp.asarray(x), ArraySpec("mxfp8", (32,), 0, "group"))
    # amax 1.0 -> floor(log2 1) - 8 (E4M3 emax) = -8 -> E8M0 119; y = x * 256
    assert np.asarray(q.scale).tolist() == [119]
    bits = np.asarray(q.qvalue).view(np.uint8)
    # 256 = 1.0 * 2^8: exponent field 8 + 7 = 15 -> 0 1111 000 = 0x78
    # 76.8 -> nearest E4M3 in [64, 128) (step 8) is 80 = 1.25 * 2^6 -> 0 1101 010 = 0x6A
    # -128 = -1.0 * 2^7 -> 1 1110 000 = 0xF0
    assert bits[:3].tolist() == [0x78, 0x6A, 0xF0]
    np.testing.assert_array_equal(np.asarray(q.dequantize())[:3], [1.0, 80 / 256, -0.5])


# ----------------------------------------------------------------------------------- NVFP4 --

def test_nvfp4_by_hand():
    b0 = np.zeros(16, np.float32)
    b0[:4] = [2688.0, -1344.0, 448.0, 100.0]
    b1 = np.zeros(16, np.float32)
    b1[:4] = [3.0, 1.0, -0.25, 0.6]
    x = np.concatenate([b0, b1])
    q = jq.quantize_array(jnp.asarray(x), ArraySpec("nvfp4", (16,), 0, "group"))
    nested = q.scale
    # tensor scale = amax / (448 * 6) = 2688 / 2688 = 1 (f32)
    ts = float(np.asarray(nested.scale).reshape(()))
    assert ts == pytest.approx(1.0, rel=2**-23)
    # block scales in E4M3: 2688 / 6 / 1 = 448 -> 0 1111 110 = 0x7E; 3 / 6 = 0.5 -> 0 0110 000
    assert np.asarray(nested.qvalue).view(np.uint8).tolist() == [0x7E, 0x30]
    codes = np.asarray(q.codes())
    # block 0, scale 448: 6 -> 0111; -3 -> 1101; 1.0 -> 0010; 0.223 -> 0 (below the 0.25 midpoint)
    assert codes[:4].tolist() == [0b0111, 0b1101, 0b0010, 0b0000]
    # block 1, scale 0.5: 6 -> 0111; 2 -> 0100; -0.5 -> 1001; 1.2 -> 1.0 -> 0010
    assert codes[16:20].tolist() == [0b0111, 0b0100, 0b1001, 0b0010]
    np.testing.assert_allclose(np.asarray(q.dequantize())[[0, 1, 2, 3, 16, 17, 18, 19]],
                               [2688, -1344, 448, 0, 3, 1, -0.25, 0.5], rtol=2**-22)
    assert q.nbytes == 16 + 2 + 4  # nibbles, two E4M3 bytes, one f32 tensor scale


# -------------------------------------------------------------------------------------- FP8 --

def test_fp8_saturates_instead_of_overflowing():
    for fmt, big, bits in [("fp8_e4m3", 448.0, 0x7E), ("fp8_e5m2", 57344.0, 0x7B)]:
        codec = jq.get_format(fmt).codec
        assert codec.qmax == big
        c = codec.encode(jnp.array([1e6, -1e6, big * 1.05, 1.0], jnp.float32))
        np.testing.assert_array_equal(np.asarray(codec.decode(c)), [big, -big, big, 1.0])
        assert np.asarray(c).view(np.uint8)[0] == bits
        assert np.asarray(c).view(np.uint8)[1] == bits | 0x80


# -------------------------------------------------------------------------------------- NF4 --

def test_nf4_levels_and_nearest_rounding():
    np.testing.assert_array_equal(NF4_LEVELS.astype(np.float64), R.NF4_LEVELS)
    assert NF4_LEVELS[7] == 0.0 and NF4_LEVELS[0] == -1.0 and NF4_LEVELS[15] == 1.0
    codec = jq.get_format("nf4").codec
    got = np.asarray(codec.encode(jnp.asarray(NF4_LEVELS)))
    assert got.tolist() == list(range(16))  # every level encodes to its own index
    # clipping to [-1, 1]; the midpoint of 0 (index 7) and 0.0796 (index 8) is 0.0398;
    # 0.6 -> 0.5626 (13); -0.6 -> -0.5251 (2), nearer than -0.6962 (1)
    got = np.asarray(codec.encode(jnp.array([1.5, -3.0, 0.039, 0.041, 0.6, -0.6], jnp.float32)))
    assert got.tolist() == [15, 0, 7, 8, 13, 2]


# ---------------------------------------------------------------------------------- integers --

def test_int8_symmetric_by_hand():
    x = jnp.array([-1.27, 0.5, 1.27, 0.0, 0.004, 0.006], jnp.float32)
    q = jq.quantize_array(x, ArraySpec("int8", (6,), 0, "tensor"))
    # scale = 1.27 / 127 = 0.01; 0.004 / 0.01 = 0.4 -> 0; 0.006 -> 0.6 -> 1
    assert float(q.block_scale()[0]) == pytest.approx(0.01, rel=2**-22)
    assert np.asarray(q.qvalue).tolist() == [-127, 50, 127, 0, 0, 1]
    assert q.qvalue.dtype == jnp.int8


def test_int4_twos_complement_nibbles_by_hand():
    x = jnp.array([-7.0, -1.0, 0.0, 1.0, 7.0], jnp.float32)
    q = jq.quantize_array(x, ArraySpec("int4", (5,), 0, "tensor"))
    assert float(q.block_scale()[0]) == 1.0
    # -7 -> 1001, -1 -> 1111, 0, 1, 7 (range [-7, 7]: -8 is never produced)
    assert np.asarray(q.codes()).tolist() == [0b1001, 0b1111, 0, 1, 7]
    assert np.asarray(q.qvalue).tolist() == [0xF9, 0x10, 0x07]  # odd length: padded zero nibble
    np.testing.assert_array_equal(np.asarray(q.dequantize()), [-7, -1, 0, 1, 7])


def test_int_ranges_are_symmetric():
    assert [jq.get_format(f).codec.qmax for f in ("int8", "int4", "int3", "int2")] == [127, 7, 3, 1]
    assert [jq.get_format(f).codec.levels for f in ("uint8", "uint4", "uint3", "uint2")] == [
        255, 15, 7, 3]
    # the largest magnitude maps exactly to +-qmax, so negation is exact
    x = jnp.array([-3.0, 3.0, 1.0, -1.0], jnp.float32)
    for fmt in ("int8", "int4", "int3", "int2"):
        d = np.asarray(jq.quantize_array(x, ArraySpec(fmt, (4,), 0, "tensor")).dequantize())
        np.testing.assert_array_equal(d[0], -d[1])
        np.testing.assert_array_equal(d[2], -d[3])
        assert d[1] == pytest.approx(3.0, rel=2**-22)  # amax maps onto +qmax


def test_minus_eight_nibble_still_decodes():
    """Storage accepts the full two's complement range (GPTQ-style checkpoints use -8)."""
    codec = jq.get_format("int4").codec
    np.testing.assert_array_equal(np.asarray(codec.decode(jnp.arange(16, dtype=jnp.uint8))),
                                  [0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1])
    np.testing.assert_array_equal(
        np.asarray(to_signed_nibble(jnp.arange(-8, 8))), R.signed_to_nibble(np.arange(-8, 8)))
    np.testing.assert_array_equal(
        np.asarray(from_signed_nibble(jnp.arange(16, dtype=jnp.uint8))),
        R.nibble_to_signed(np.arange(16)))


def test_asymmetric_worked_example():
    """[-2, 18] in UINT8: scale 20/255, zero point round(2 * 255 / 20) = round(25.5) = 26
    (half to even), and 5.0 -> 5 / (20/255) + 26 = 63.75 + 26 = 89.75 -> 90."""
    x = jnp.array([-2.0, 18.0, 5.0, 0.0], jnp.float32)
    q = jq.quantize_array(x, ArraySpec("uint8", (4,), 0, "tensor"))
    assert float(q.block_scale()[0]) == pytest.approx(20 / 255, rel=2**-22)
    assert int(q.zero_point[0]) == 26
    codes = np.asarray(q.qvalue)
    assert codes[2] == 90
    assert codes[1] == 255  # 229.5 + 26 = 255.5, clipped to 255
    assert codes[3] == 26   # zero is exactly representable: it maps onto the zero point
    deq = np.asarray(q.dequantize())
    assert deq[3] == 0.0
    assert deq[2] == pytest.approx((90 - 26) * 20 / 255, rel=2**-22)


def test_asymmetric_range_always_covers_zero():
    # all-positive data: lo is taken as 0 -> zero point 0; all-negative: zero point 255
    for x, zp in [([1.0, 2.0, 3.0], 0), ([-1.0, -2.0, -3.0], 255)]:
        q = jq.quantize_array(jnp.array(x, jnp.float32), ArraySpec("uint8", (3,), 0, "tensor"))
        assert int(q.zero_point[0]) == zp
        assert float(q.block_scale()[0]) == pytest.approx(3 / 255, rel=2**-22)


# ---------------------------------------------------------------------------------- packing --

def test_pack_layout_by_hand():
    codes = jnp.array([1, 2, 3], jnp.uint8)
    assert np.asarray(pack_nibbles(codes, 0)).tolist() == [0x21, 0x03]
    m = jnp.array([[1, 2, 3], [4, 5, 6]], jnp.uint8)
    assert np.asarray(pack_nibbles(m, 0)).tolist() == [[0x41, 0x52, 0x63]]
    assert np.asarray(pack_nibbles(m, 1)).tolist() == [[0x21, 0x03], [0x54, 0x06]]
    assert np.asarray(pack_nibbles(m, -1)).tolist() == [[0x21, 0x03], [0x54, 0x06]]


@pytest.mark.parametrize(
    "shape,axis",
    [((1,), 0), ((5,), 0), ((6,), 0), ((4, 3), 0), ((4, 3), 1), ((3, 4), 1), ((3, 7, 5), 0),
     ((3, 7, 5), 1), ((3, 7, 5), 2), ((3, 7, 5), -1), ((2, 1, 9), 1)],
)
def test_pack_unpack_round_trip(shape, axis):
    rng = np.random.default_rng(sum(shape) * 10 + axis)
    codes = rng.integers(0, 16, shape).astype(np.uint8)
    packed = pack_nibbles(jnp.asarray(codes), axis)
    ax = axis % len(shape)
    want_shape = list(shape)
    want_shape[ax] = -(-shape[ax] // 2)
    assert packed.shape == tuple(want_shape) and packed.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(packed), R.pack_nibbles(codes, ax))
    back = unpack_nibbles(packed, axis, shape[ax])
    np.testing.assert_array_equal(np.asarray(back), codes)
