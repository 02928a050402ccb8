"""Every format, every granularity, against the independent float64 reference
(tests/numpy_reference.py) on fresh seeded random inputs.

Tolerance (see the docstring of tests/numpy_reference.py and check_against_reference): codes
are identical and the f32 dequantized values agree to the f32 rounding of the scale, except
  * at element near-ties, where the exact x / scale is within a relative 2^-20 (16 f32 ulps) of
    a rounding boundary: jaxquant rounds x / scale in f32 (error <= 2^-24 relative), so it may
    land on the other side; integer codes may then differ by one step. At most 5% of the
    elements may be near-ties (measured: at most 0.03% of these f32 inputs, and none of them
    actually rounds differently; up to 0.4% of bf16 inputs; none for MX formats);
  * block scales may be 2 f32 ulps off: XLA computes amax / qmax as amax * f32(1 / qmax);
  * at block-level near-ties (zero point at x.5, bf16 round-up of a scale that is exactly a
    bf16 value, E4M3 block-scale midpoints, double-quantization int8 codes) jaxquant must match
    one of the reference's outcomes on either side of the tie exactly;
  * scales derived from f32 reductions (percentiles, the double-quantization mean) may differ by
    2^-18 relative.
"""

from __future__ import annotations

import functools
import sys
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy_reference as R  # noqa: E402

import jaxquant as jq  # noqa: E402
from jaxquant.core.spec import ArraySpec, Clipping  # noqa: E402

FLOAT_SCALED = [f for f in R.ALL_FORMATS if f not in ("mxfp4", "mxfp8", "nvfp4")]
SHAPE = (64, 48)
BLOCKS = {
    "tensor": (64, 48),
    "channel": (64, 1),
    "row": (1, 48),
    "group16": (16, 1),
    "ragged_group24": (24, 1),  # 64 = 2 x 24 + 16
    "block8x8": (8, 8),
    "ragged_block7x5": (7, 5),  # 64 = 9 x 7 + 1, 48 = 9 x 5 + 3
}


def seed_of(*parts) -> int:
    return zlib.crc32(repr(parts).encode())


def sample(shape, seed, dtype=np.float32) -> np.ndarray:
    """Gaussian weights with log-normally varying column scales and a few 6-sigma outliers."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    x *= np.exp(rng.normal(0.0, 1.0, (1,) * (len(shape) - 1) + (shape[-1],)))
    mask = rng.random(shape) < 0.002
    x[mask] *= 6.0
    return x.astype(dtype)


@functools.partial(jax.jit, static_argnames="spec")
def quantize_and_inspect(x, spec):
    """The QArray with its codes, effective block scales and f32 dequantization, compiled as one
    program to keep the suite fast (the eager QArray methods run the same code; they are
    exercised eagerly in test_core_qarray.py)."""
    q = jq.quantize_array(x, spec)
    return q, q.codes(), q.block_scale(), q.dequantize(jnp.float32)


def run(x, fmt, block, axis=0, scale_dtype="float32", double_quant=False, clipping=None):
    spec = ArraySpec(fmt, tuple(block), axis, "group", scale_dtype=scale_dtype,
                     double_quant=double_quant,
                     clipping=Clipping(**clipping) if clipping else Clipping())
    q, codes, block_scale, values = quantize_and_inspect(jnp.asarray(x), spec)
    ref = R.reference_quantize(np.asarray(x), fmt, block, scale_dtype, double_quant, clipping)
    stats = R.check_against_reference(ref, R.as_reference_codes(fmt, codes), block_scale, values,
                                      zero_point=q.zero_point)
    return q, ref, stats


# Every float-scaled format gets the channel granularity, one ragged granularity and one more in
# rotation, so every (format family, granularity) pair is covered without compiling them all.
_RAGGED = ["ragged_group24", "ragged_block7x5"]
_EXTRA = ["tensor", "row", "group16", "block8x8", "ragged_group24"]
FORMAT_BLOCK_CASES = [
    (fmt, name)
    for i, fmt in enumerate(FLOAT_SCALED)
    for name in dict.fromkeys(("channel", _RAGGED[i % 2], _EXTRA[i % 5]))
]


def _block_amb(ref) -> np.ndarray:
    return R.to_blocks(ref.ambiguous.astype(float), ref.block, 0.0).max(-1) > 0


@pytest.mark.parametrize("fmt,block_name", FORMAT_BLOCK_CASES)
def test_float_scaled_formats_match_reference(fmt, block_name):
    block = BLOCKS[block_name]
    x = sample(SHAPE, seed_of(fmt, block_name))
    q, ref, _ = run(x, fmt, block)
    # stored representation: f32 scales of grid shape, uint8 zero-points for asymmetric formats
    assert q.scale.dtype == jnp.float32 and q.scale.shape == ref.scale.shape
    if fmt.startswith("uint"):
        assert q.zero_point.dtype == jnp.uint8
        ok = ~_block_amb(ref)
        np.testing.assert_array_equal(np.asarray(q.zero_point)[ok], ref.zero_point[ok])
    else:
        assert q.zero_point is None


def check_output_dtype(q, ref, dtype):
    """dequantize() returns the input dtype: jaxquant's f32 dequantization rounded once, equal to
    the reference's except next to a rounding midpoint of the output dtype."""
    out = q.dequantize()
    assert out.dtype == dtype and out.shape == ref.shape
    np.testing.assert_array_equal(np.asarray(out),
                                  np.asarray(q.dequantize(jnp.float32).astype(dtype)))
    lib = np.asarray(out).astype(np.float64)
    want = ref.values_as(np.dtype(dtype)).astype(np.float64)

    # jaxquant's f32 value may be an ulp off the reference's (its scale is amax * f32(1 / qmax)),
    # which can round to the neighbouring bf16/f16 value where the reference sits within 2^-22
    # (relative) of a midpoint of the output dtype.
    def cast(v):
        return v.astype(np.float32).astype(np.dtype(dtype)).astype(np.float64)

    ok = ~ref.ambiguous & (cast(ref.values * (1 - 2**-22)) == cast(ref.values * (1 + 2**-22)))
    np.testing.assert_array_equal(lib[ok], want[ok])
    step = np.spacing(np.abs(want).astype(np.dtype(dtype))).astype(np.float64)
    assert (np.abs(lib - want)[~ref.ambiguous] <= step[~ref.ambiguous]).all()


@pytest.mark.parametrize("fmt", FLOAT_SCALED)
def test_bf16_inputs_with_bf16_scales_match_reference(fmt):
    """bf16 weights, bf16 scales rounded UP (the smallest bf16 >= the f32 scale), bf16 output."""
    x = jnp.asarray(sample(SHAPE, seed_of("bf16", fmt)), jnp.bfloat16)
    q, ref, _ = run(x, fmt, (16, 1), scale_dtype="bfloat16")
    assert q.scale.dtype == jnp.bfloat16
    check_output_dtype(q, ref, jnp.bfloat16)
    if fmt.startswith("uint"):
        return
    stored = np.asarray(q.scale).astype(np.float64)
    amax = np.abs(R.to_blocks(np.asarray(x).astype(np.float64), (16, 1))).max(-1)
    f32_scale = R.nonzero_scale(R.f32(amax / R.element_qmax(fmt)))
    # rounded up: never below the f32 scale (up to the 1-ulp reciprocal rewrite), so
    # amax / scale <= qmax still holds ...
    assert (stored >= f32_scale * (1 - 2**-23)).all()
    # ... and the smallest such bf16: one bf16 step below is under the f32 scale
    bits = np.asarray(q.scale).view(np.uint16)
    below = (bits - 1).astype(np.uint16).view(ml_dtypes.bfloat16).astype(np.float64)
    assert (below < f32_scale * (1 + 2**-22)).all()


@pytest.mark.parametrize(
    "fmt,shape,block",
    [
        ("mxfp4", (64, 48), (32, 1)),
        ("mxfp4", (80, 40), (32, 1)),  # ragged: 80 = 2 x 32 + 16
        ("mxfp4", (48, 64), (1, 32)),
        ("mxfp8", (64, 48), (32, 1)),
        ("mxfp8", (80, 40), (32, 1)),
        ("nvfp4", (64, 48), (16, 1)),
        ("nvfp4", (40, 24), (16, 1)),  # ragged: 40 = 2 x 16 + 8
        ("nvfp4", (24, 64), (1, 16)),
    ],
)
def test_mx_and_nvfp4_match_reference(fmt, shape, block):
    x = sample(shape, seed_of(fmt, shape, block))
    axis = 0 if block[0] > 1 else 1
    q, ref, _ = run(x, fmt, block, axis=axis)
    if fmt.startswith("mx"):
        assert q.scale.dtype == jnp.uint8
        np.testing.assert_array_equal(np.asarray(q.scale), ref.e8m0)
    else:
        nested = q.scale
        assert jq.is_qarray(nested) and nested.qvalue.dtype == jnp.float8_e4m3fn
        assert float(np.asarray(nested.scale).reshape(())) == ref.tensor_scale or np.isclose(
            float(np.asarray(nested.scale).reshape(())), ref.tensor_scale, rtol=2**-22, atol=0)
        ok = ~_block_amb(ref)
        np.testing.assert_array_equal(
            np.asarray(nested.qvalue).astype(np.float64)[ok], ref.block_scale_e4m3[ok])


@pytest.mark.parametrize(
    "shape,block",
    [
        ((512, 96), (64, 1)),   # grid 8 x 96 = 768 scales: three double-quant blocks of 256
        ((320, 50), (64, 1)),   # 250 scales, padded with their mean to 256
        ((700, 24), (64, 1)),   # ragged groups (700 = 10 x 64 + 60), 264 scales -> 512
        ((64, 40), (1, 8)),     # groups along the last axis, 320 scales
    ],
)
def test_nf4_double_quant_matches_reference(shape, block):
    x = sample(shape, seed_of("nf4dq", shape, block))
    axis = 0 if block[0] > 1 else 1
    q, ref, _ = run(x, "nf4", block, axis=axis, double_quant=True)
    nested = q.scale
    assert jq.is_qarray(nested) and nested.format == "int8"
    assert nested.qvalue.shape == ref.dq_codes.shape
    assert nested.scale.dtype == jnp.float32
    np.testing.assert_allclose(float(nested.offset), ref.dq_mean, rtol=2**-18)
    np.testing.assert_allclose(np.asarray(nested.scale), ref.dq_scales, rtol=2**-18)
    same = np.asarray(nested.qvalue).astype(np.int64) == ref.dq_codes
    assert same.mean() > 0.99 and (np.abs(np.asarray(nested.qvalue) - ref.dq_codes) <= 1).all()
    # padding entries (the mean minus itself) encode to 0
    n = int(np.prod(ref.scale.shape))
    assert (np.asarray(nested.qvalue)[n:] == 0).all()


DTYPE_CASES = [(f, jnp.bfloat16) for f in ("mxfp4", "mxfp8", "nvfp4")] + [
    (f, jnp.float16) for f in ("int8", "uint4", "fp8_e4m3", "nf4", "mxfp8", "nvfp4")
]


@pytest.mark.parametrize("fmt,dtype", DTYPE_CASES)
def test_low_precision_inputs_match_reference_and_keep_dtype(fmt, dtype):
    block = (32, 1) if fmt.startswith("mx") else (16, 1)
    x = jnp.asarray(sample(SHAPE, seed_of("dtype", fmt, str(dtype))), dtype)
    q, ref, _ = run(x, fmt, block)
    check_output_dtype(q, ref, dtype)


@pytest.mark.parametrize(
    "fmt,block,percentile",
    [
        ("int8", (16, 1), 99.0), ("int4", (64, 1), 90.0), ("uint4", (16, 1), 99.0),
        ("uint8", (1, 48), 90.0), ("nf4", (16, 1), 99.0), ("fp8_e4m3", (64, 1), 90.0),
        ("fp4_e2m1", (8, 8), 99.0), ("mxfp4", (32, 1), 90.0), ("nvfp4", (16, 1), 99.0),
        # ragged last blocks: the percentile is taken over the block's real elements only
        ("int4", (24, 1), 99.0), ("uint4", (24, 1), 90.0), ("int8", (7, 5), 99.0),
        ("nf4", (24, 1), 90.0),
    ],
)
def test_percentile_clipping_matches_reference(fmt, block, percentile):
    x = sample(SHAPE, seed_of("pct", fmt, block, percentile))
    run(x, fmt, block, clipping={"method": "percentile", "percentile": percentile})


def test_three_dimensional_and_one_dimensional_arrays():
    x3 = sample((6, 20, 12), seed_of("3d"))
    for block, fmt in [((1, 8, 12), "int4"), ((2, 20, 1), "uint8"), ((6, 20, 12), "fp8_e5m2"),
                       ((4, 7, 5), "nf4")]:
        run(x3, fmt, block, axis=1)
    x1 = sample((100,), seed_of("1d"))
    for block, fmt in [((32,), "mxfp4"), ((30,), "uint3")]:
        run(x1, fmt, block)


@pytest.mark.parametrize("fmt", ["int4", "uint3", "nf4", "mxfp4", "nvfp4"])
def test_packing_along_either_axis_gives_identical_codes(fmt):
    """The same logical codes whether nibbles pack along axis 0 or axis 1; odd lengths padded."""
    x = sample((33, 31), seed_of("pack", fmt))
    block = (32, 1) if fmt == "mxfp4" else (16, 1) if fmt == "nvfp4" else (11, 1)
    q0 = jq.quantize_array(jnp.asarray(x), ArraySpec(fmt, block, 0))
    q1 = jq.quantize_array(jnp.asarray(x), ArraySpec(fmt, block, 1))
    assert q0.qvalue.shape == (17, 31) and q1.qvalue.shape == (33, 16)
    np.testing.assert_array_equal(np.asarray(q0.codes()), np.asarray(q1.codes()))
    np.testing.assert_array_equal(np.asarray(q0.qvalue),
                                  R.pack_nibbles(np.asarray(q0.codes()), 0))
    np.testing.assert_array_equal(np.asarray(q1.qvalue),
                                  R.pack_nibbles(np.asarray(q1.codes()), 1))
    np.testing.assert_array_equal(np.asarray(q0.dequantize()), np.asarray(q1.dequantize()))


def test_fake_quantize_equals_dequantize_of_quantize():
    x = jnp.asarray(sample(SHAPE, 7), jnp.bfloat16)
    spec = ArraySpec("int4", (16, 1), 0)
    fq = jq.fake_quantize(x, spec)
    assert fq.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(fq), np.asarray(jq.quantize_array(x, spec).dequantize()))
