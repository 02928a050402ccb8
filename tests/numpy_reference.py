"""An independent float64 NumPy reference of jaxquant's quantize -> dequantize.

Written from the library's *documented* conventions only (docstrings of jaxquant.core and
jaxquant.formats), without importing jaxquant, so that the tests compare two implementations:

  granularity  a block shape B of the array's rank; blocks tile the array, the last block along
               an axis may be ragged (it holds only the real elements; this module pads with NaN
               and uses nan-aware reductions, so padding never takes part in any statistic).
  intN         symmetric, codes in [-qmax, qmax], qmax = 2^(N-1) - 1, scale = amax / qmax.
  intN_full    symmetric on the full two's complement grid: scale = amax / (2^(N-1) - 0.5), codes
               round(x / scale) clipped to [-2^(N-1), 2^(N-1) - 1] (int4: amax -> 7.5 -> 8 -> 7).
  uintN        asymmetric, codes in [0, 2^N - 1]; the range [min(lo, 0), max(hi, 0)] has width w,
               scale = w / (2^N - 1), zero_point = round(-lo * (2^N - 1) / w) clipped to [0, 2^N - 1].
  fp8_e4m3/e5m2  scale = amax / fp8_max; elements clipped to +-fp8_max and cast (round to nearest
               even) with ml_dtypes.
  fp4_e2m1     scale = amax / 6; elements rounded to the nearest of {0, .5, 1, 1.5, 2, 3, 4, 6}
               (ties to the even index), saturating at 6; code = sign << 3 | index.
  nf4          scale = block absmax; y = x / scale rounded to the nearest of the 16 QLoRA levels.
               Double quantization: the f32 absmax values of the whole grid (row-major) are
               padded with their mean to a multiple of 256, centred on the mean and stored as
               symmetric int8 in blocks of 256 with f32 scales; the mean is added back.
  mxfp4/mxfp8  OCP MX: shared exponent e = floor(log2(amax)) - emax_elem (emax 2 for E2M1, 8 for
               E4M3), clamped to [-127, 127] (all-zero block: -127); stored as E8M0 code e + 127;
               elements x / 2^e cast with saturation.
  nvfp4        tensor scale t = f32(amax_tensor / (448 * 6)) (1 if 0); block scale
               E4M3(clip(amax_block / 6 / t, 0, 448)); effective scale f32(E4M3 * t); elements E2M1.
  scales       computed in f32 (scale = f32(amax / qmax)); a bf16 scale is the smallest bf16
               >= the f32 scale (rounded UP, so amax / scale <= qmax still holds); an all-zero
               block (scale 0) or a non-finite scale becomes 1.
  dequantize   (decode(code) - zero_point) * scale, computed in f32, then cast to the output dtype.

Exactness and the only tolerated differences. jaxquant works in f32 and this module in f64:
  * element near-ties: jaxquant rounds y = x / scale (+ zero point) in f32 (relative error
    <= 2^-24) before choosing a code. Elements whose exact y lies within a relative EPS = 2^-20
    of a rounding boundary (a half-integer, a midpoint between two FP8 / E2M1 / NF4 values) are
    marked ambiguous; there the codes may differ (integer codes by at most one step). MX scales
    are powers of two, so x / 2^e is exact in both and MX elements have no such window.
  * the f32 scale: XLA rewrites amax / qmax (a division by a constant) as amax * f32(1 / qmax),
    so jaxquant's f32 scale may be an ulp off the correctly rounded quotient; scales are compared
    to SCALE_ULPS = 2 ulps and dequantized values to |code| * that + 1 ulp.
  * block-level near-ties (a zero point at x.5, an f32 scale that is exactly a bf16 value before
    the bf16 round-up, an E4M3 block-scale midpoint, an int8 code of a double-quantized scale):
    `reference_quantize` also computes the outcomes with the decision's input nudged by its
    window either way (`RefQuant.variants`), and jaxquant must match one of them exactly in
    each block (the bf16 round-up case is common with bf16 weights: amax / qmax is then often
    exactly a bf16 value and the ulp from the reciprocal decides whether it steps up).
  * f32 reductions (percentile interpolation, the double-quantization mean) add a relative
    uncertainty of REDUCTION_EPS = 2^-18 to every scale derived from them.
Outside these, codes are identical and dequantized values agree to the f32 rounding.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import ml_dtypes
import numpy as np

#: Relative half-width of the window around a value inside which a rounding decision counts as a
#: near-tie: 2^-20 = 16 f32 ulps, 16x the worst-case error of one f32 division/multiplication.
EPS = 2.0**-20

#: Relative uncertainty of quantities that jaxquant obtains by f32 *reductions*: the mean of the
#: block scales in NF4 double quantization, and the f32 percentile interpolation (measured: up to
#: 15 f32 ulps = 1e-6 relative for the 99th percentile of 64 values): 2^-18 = 3.8e-6.
REDUCTION_EPS = 2.0**-18

E2M1_MAGNITUDES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], np.float64)

NF4_LEVELS = np.array(
    [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    ],
    np.float32,
).astype(np.float64)

FP8_DTYPES = {"fp8_e4m3": ml_dtypes.float8_e4m3fn, "fp8_e5m2": ml_dtypes.float8_e5m2}
FP8_MAX = {"fp8_e4m3": 448.0, "fp8_e5m2": 57344.0}
E4M3_MAX = 448.0
E2M1_MAX = 6.0
MX_ELEMENT = {"mxfp4": ("fp4_e2m1", 2), "mxfp8": ("fp8_e4m3", 8)}
MX_BLOCK = 32
NVFP4_BLOCK = 16
DQ_BLOCK = 256

INT_BITS = {f"int{b}": b for b in (8, 4, 3, 2)}
FULL_INT_BITS = {f"int{b}_full": b for b in (8, 4, 3, 2)}
SIGNED_INT_BITS = {**INT_BITS, **FULL_INT_BITS}
UINT_BITS = {f"uint{b}": b for b in (8, 4, 3, 2)}
ALL_FORMATS = sorted(
    list(SIGNED_INT_BITS) + list(UINT_BITS) + ["fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "nf4", "mxfp4",
                                               "mxfp8", "nvfp4"]
)
PACKED_FORMATS = {"int4", "int3", "int2", "int4_full", "int3_full", "int2_full", "uint4",
                  "uint3", "uint2", "fp4_e2m1", "nf4", "mxfp4", "nvfp4"}


# ----------------------------------------------------------------------------------------------
# element codecs: f64 scaled value -> (code, decoded f64 value)
# ----------------------------------------------------------------------------------------------

def int_qmax(fmt: str) -> int:
    return 2 ** (INT_BITS[fmt] - 1) - 1


def int_bounds(fmt: str) -> tuple[int, int]:
    """(smallest, largest) code of a signed integer format, restricted or full range."""
    if fmt in FULL_INT_BITS:
        b = FULL_INT_BITS[fmt]
        return -(2 ** (b - 1)), 2 ** (b - 1) - 1
    return -int_qmax(fmt), int_qmax(fmt)


def uint_levels(fmt: str) -> int:
    return 2 ** UINT_BITS[fmt] - 1


def element_qmax(fmt: str) -> float:
    """What the block amax is mapped onto by a symmetric scale."""
    if fmt in INT_BITS:
        return float(int_qmax(fmt))
    if fmt in FULL_INT_BITS:
        return 2.0 ** (FULL_INT_BITS[fmt] - 1) - 0.5
    if fmt in FP8_DTYPES:
        return FP8_MAX[fmt]
    if fmt in ("fp4_e2m1", "nvfp4"):
        return E2M1_MAX
    if fmt == "nf4":
        return 1.0
    raise ValueError(fmt)


def round_half_even(y: np.ndarray) -> np.ndarray:
    return np.rint(y)  # IEEE round-half-to-even


def e2m1_encode(y: np.ndarray) -> np.ndarray:
    """Nearest E2M1 value (ties to the even index, saturating at 6); code = sign << 3 | index."""
    y = np.asarray(y, np.float64)
    mag = np.minimum(np.abs(y), E2M1_MAX)
    d = np.abs(mag[..., None] - E2M1_MAGNITUDES)
    idx = np.argmin(d, axis=-1)  # first (lower) index on a tie
    nxt = np.minimum(idx + 1, 7)
    tie = (np.take_along_axis(d, nxt[..., None], -1)[..., 0]
           == np.take_along_axis(d, idx[..., None], -1)[..., 0]) & (nxt != idx)
    idx = np.where(tie & (idx % 2 == 1), nxt, idx)
    sign = np.signbit(y).astype(np.int64)
    return (sign << 3) | idx.astype(np.int64)


def e2m1_decode(code: np.ndarray) -> np.ndarray:
    code = np.asarray(code, np.int64)
    mag = E2M1_MAGNITUDES[code & 7]
    return np.where(code & 8, -mag, mag)


def nf4_encode(y: np.ndarray) -> np.ndarray:
    """Index of the nearest NF4 level (lower index on an exact tie); y clipped to [-1, 1]."""
    y = np.clip(np.asarray(y, np.float64), -1.0, 1.0)
    return np.argmin(np.abs(y[..., None] - NF4_LEVELS), axis=-1).astype(np.int64)


def fp8_cast(y: np.ndarray, fmt: str) -> np.ndarray:
    """Saturating FP8 cast; returns the decoded f64 value (which is the code for FP8)."""
    yc = np.clip(np.asarray(y, np.float64), -FP8_MAX[fmt], FP8_MAX[fmt])
    return yc.astype(FP8_DTYPES[fmt]).astype(np.float64)


def encode(y: np.ndarray, fmt: str) -> np.ndarray:
    """Element code of scaled values y (zero-point already added for asymmetric formats).

    Representation: signed integer value (intN), unsigned code (uintN), FP8 value (f64),
    E2M1 code sign << 3 | index (fp4_e2m1, mxfp4, nvfp4), NF4 level index (nf4).
    """
    if fmt in SIGNED_INT_BITS:
        lo, hi = int_bounds(fmt)
        return np.clip(round_half_even(y), lo, hi).astype(np.int64)
    if fmt in UINT_BITS:
        return np.clip(round_half_even(y), 0, uint_levels(fmt)).astype(np.int64)
    if fmt in FP8_DTYPES:
        return fp8_cast(y, fmt)
    if fmt in ("fp4_e2m1", "nvfp4"):
        return e2m1_encode(y)
    if fmt == "nf4":
        return nf4_encode(y)
    if fmt in MX_ELEMENT:
        return encode(y, MX_ELEMENT[fmt][0])
    raise ValueError(f"unknown format {fmt}")


def decode(code: np.ndarray, fmt: str) -> np.ndarray:
    if fmt in SIGNED_INT_BITS or fmt in UINT_BITS:
        return np.asarray(code, np.float64)
    if fmt in FP8_DTYPES:
        return np.asarray(code, np.float64)
    if fmt in ("fp4_e2m1", "nvfp4"):
        return e2m1_decode(code)
    if fmt == "nf4":
        return NF4_LEVELS[np.asarray(code, np.int64)]
    if fmt in MX_ELEMENT:
        return decode(code, MX_ELEMENT[fmt][0])
    raise ValueError(f"unknown format {fmt}")


def code_range(fmt: str) -> tuple[float, float]:
    """Legal range of the code representation returned by `encode`."""
    if fmt in SIGNED_INT_BITS:
        return int_bounds(fmt)
    if fmt in UINT_BITS:
        return 0, uint_levels(fmt)
    if fmt in FP8_DTYPES:
        return -FP8_MAX[fmt], FP8_MAX[fmt]
    if fmt in MX_ELEMENT:
        return code_range(MX_ELEMENT[fmt][0])
    return 0, 15  # E2M1 and NF4 nibbles


# ----------------------------------------------------------------------------------------------
# blocks (NaN-padded views, so that ragged last blocks hold only real elements)
# ----------------------------------------------------------------------------------------------

def grid_shape(shape: Sequence[int], block: Sequence[int]) -> tuple[int, ...]:
    return tuple(-(-s // b) for s, b in zip(shape, block))


def to_blocks(x: np.ndarray, block: Sequence[int], fill: float = np.nan) -> np.ndarray:
    """x of shape S -> (G[0], ..., G[n-1], prod(B)) with ragged blocks padded by `fill`."""
    x = np.asarray(x, np.float64)
    g = grid_shape(x.shape, block)
    padded = np.full(tuple(gi * bi for gi, bi in zip(g, block)), fill, np.float64)
    padded[tuple(slice(0, s) for s in x.shape)] = x
    inter = []
    for gi, bi in zip(g, block):
        inter += [gi, bi]
    v = padded.reshape(inter)
    nd = x.ndim
    v = v.transpose(tuple(range(0, 2 * nd, 2)) + tuple(range(1, 2 * nd, 2)))
    return v.reshape(g + (-1,))


def from_blocks(vb: np.ndarray, shape: Sequence[int], block: Sequence[int]) -> np.ndarray:
    """Inverse of `to_blocks` (padding dropped)."""
    nd = len(shape)
    g = vb.shape[:nd]
    v = vb.reshape(tuple(g) + tuple(block))
    perm = []
    for i in range(nd):
        perm += [i, nd + i]
    v = v.transpose(perm).reshape(tuple(gi * bi for gi, bi in zip(g, block)))
    return v[tuple(slice(0, s) for s in shape)]


def broadcast_blocks(per_block: np.ndarray, shape: Sequence[int], block: Sequence[int]) -> np.ndarray:
    """Grid-shaped values -> logical shape (each element gets its block's value)."""
    v = np.asarray(per_block)
    for ax, b in enumerate(block):
        v = np.repeat(v, b, axis=ax)
    return v[tuple(slice(0, s) for s in shape)]


# ----------------------------------------------------------------------------------------------
# scales
# ----------------------------------------------------------------------------------------------

def f32(v) -> np.ndarray:
    return np.asarray(v, np.float64).astype(np.float32).astype(np.float64)


def nonzero_scale(s: np.ndarray) -> np.ndarray:
    """All-zero blocks (scale 0) and non-finite scales get scale 1."""
    return np.where((s > 0) & np.isfinite(s), s, 1.0)


def bf16_round_up(s: np.ndarray) -> np.ndarray:
    """Smallest bf16 >= s for positive finite f32 s, by truncating the f32 bit pattern to its top
    16 bits and stepping up when anything was cut off (independent of ml_dtypes' RNE cast)."""
    bits = np.asarray(s, np.float64).astype(np.float32).view(np.uint32)
    low = bits & np.uint32(0xFFFF)
    top = bits & np.uint32(0xFFFF0000)
    top = np.where(low != 0, top + np.uint32(0x10000), top).astype(np.uint32)
    return top.view(np.float32).astype(np.float64)


def store_scale(s: np.ndarray, scale_dtype: str) -> np.ndarray:
    s = f32(s)
    if scale_dtype == "float32":
        return s
    if scale_dtype == "bfloat16":
        return bf16_round_up(s)
    raise ValueError(scale_dtype)


def e8m0_exponent(amax: np.ndarray, elem_emax: int) -> np.ndarray:
    """floor(log2(amax)) - elem_emax, clamped to [-127, 127]; all-zero blocks: -127."""
    amax = np.asarray(amax, np.float64)
    _, e = np.frexp(np.where(amax > 0, amax, 1.0))  # amax = m * 2^e with m in [0.5, 1)
    exp = e.astype(np.int64) - 1 - elem_emax
    exp = np.where(amax > 0, exp, -127)
    return np.clip(exp, -127, 127)


def e8m0_encode(exponent: np.ndarray) -> np.ndarray:
    return (np.asarray(exponent, np.int64) + 127).astype(np.uint8)


def e8m0_decode(code: np.ndarray) -> np.ndarray:
    code = np.asarray(code, np.int64)
    return np.where(code == 255, np.nan, np.ldexp(1.0, code - 127))


def _window_differs(fn, v: np.ndarray, half_width: np.ndarray) -> np.ndarray:
    """True where fn is not constant over [v - half_width, v, v + half_width] (a near-tie).
    A zero half-width is no window (v + 0 would also turn -0.0 into +0.0)."""
    h = np.broadcast_to(half_width, np.shape(v))
    a = fn(np.where(h > 0, v - h, v))
    b = fn(v)
    c = fn(np.where(h > 0, v + h, v))
    return (a != b) | (b != c)


def _percentile(vals: np.ndarray, p: float) -> np.ndarray:
    return np.nanpercentile(vals, p, axis=-1)


def block_range(xb: np.ndarray, asymmetric: bool, clipping: dict | None) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) per block under min-max or percentile clipping (MSE: see `mse_block_errors`)."""
    method = (clipping or {}).get("method", "minmax")
    if method == "minmax":
        return np.nanmin(xb, axis=-1), np.nanmax(xb, axis=-1)
    if method == "percentile":
        p = float(clipping.get("percentile", 99.9))
        if asymmetric:
            return _percentile(xb, 100.0 - p), _percentile(xb, p)
        a = _percentile(np.abs(xb), p)
        return -a, a
    raise ValueError(f"reference handles minmax/percentile; got {method}")


# ----------------------------------------------------------------------------------------------
# the reference quantizer
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class RefVariant:
    """One outcome of the block-level rounding decisions (see `RefQuant.variants`)."""

    scale: np.ndarray            # effective f64 scale per block (an exact f32 value), grid shape
    zero_point: np.ndarray | None
    codes: np.ndarray            # logical shape, representation as in `encode`
    values: np.ndarray           # f64, logical shape: exact (decode - zp) * scale
    ambiguous: np.ndarray        # bool, logical shape: element-level near-ties


@dataclasses.dataclass
class RefQuant:
    """Reference result (the primary outcome). Arrays of grid shape G unless said otherwise.

    `variants` holds the primary outcome and the outcomes with every block-level decision input
    nudged down / up by its near-tie window (a zero-point at x.5, an f32 scale that is exactly a
    bf16 value, ...); they differ only in the blocks where such a decision is a near-tie, and
    jaxquant must match one of them exactly in every block.
    """

    format: str
    shape: tuple[int, ...]
    block: tuple[int, ...]
    values: np.ndarray
    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None
    ambiguous: np.ndarray       # element near-ties, plus every element of a block-level near-tie
    scale_atol: np.ndarray      # per block: how far jaxquant's effective scale may be from `scale`
    variants: list[RefVariant] = dataclasses.field(default_factory=list)
    e8m0: np.ndarray | None = None         # MX: stored E8M0 codes
    block_scale_e4m3: np.ndarray | None = None  # NVFP4: E4M3 block scales (f64 values)
    tensor_scale: float | None = None          # NVFP4
    dq_mean: float | None = None               # NF4 double quantization
    dq_codes: np.ndarray | None = None         # NF4 double quantization: int8 codes (padded)
    dq_scales: np.ndarray | None = None        # NF4 double quantization: f32 block scales

    def values_as(self, dtype) -> np.ndarray:
        """The dequantized array as jaxquant returns it: f32 product, then cast to `dtype`."""
        return self.values.astype(np.float32).astype(dtype)


def _double_quantize(s: np.ndarray, eps: float, shift: int):
    """NF4 double quantization of the f32 scales s (grid shape). Returns (effective f64 scales,
    their absolute tolerance, mean, int8 codes (padded), f32 block scales)."""
    flat = s.reshape(-1)
    n = flat.size
    n_pad = -(-n // DQ_BLOCK) * DQ_BLOCK
    mean = float(np.mean(flat))
    centered = np.concatenate([flat, np.full(n_pad - n, mean)]) - mean
    cb = centered.reshape(-1, DQ_BLOCK)
    amax = np.max(np.abs(cb), axis=1)
    sc = nonzero_scale(f32(amax / 127.0))
    u = cb / sc[:, None]
    # jaxquant's mean is an f32 reduction, uncertain by d = REDUCTION_EPS * |mean|; it shifts the
    # centred values by d and their block amax (hence sc = amax / 127) by up to d, so u = cb / sc
    # moves by up to 2 d / sc, plus the f32 rounding of the division.
    d = REDUCTION_EPS * abs(mean)
    unc = 2 * d / sc[:, None] + eps * np.abs(u)
    codes = np.clip(np.rint(u + shift * unc), -127, 127)
    eff = (codes * sc[:, None]).reshape(-1)[:n] + mean
    atol = (2 * d + 4 * eps * np.abs(eff)).reshape(s.shape)
    return eff.reshape(s.shape), atol, mean, codes.reshape(-1).astype(np.int64), sc


def _block_params(fmt, lo, hi, scale_dtype, double_quant, scale_rel, eps, shift):
    """Scales (and zero-points) per block, every block-level decision input multiplied by
    (1 + shift * its window): shift 0 is the exact reference, -1 / +1 the near-tie outcomes."""
    out = {"zp": None, "atol": np.zeros(lo.shape)}

    def nudge(v, w):
        return v * (1.0 + shift * w)

    if fmt in UINT_BITS:
        levels = uint_levels(fmt)
        lo = np.minimum(lo, 0.0)
        hi = np.maximum(hi, 0.0)
        width = f32(hi - lo)          # the range width is an f32 quantity, like every scale
        zraw = nudge(-lo * levels / np.where(width > 0, width, 1.0), eps + 2 * scale_rel)
        out["zp"] = np.clip(np.where(width > 0, np.rint(zraw), 0.0), 0, levels)
        s32 = f32(nonzero_scale(width / levels))
        if scale_dtype == "bfloat16":
            s32 = nudge(s32, eps + scale_rel)
        out["scale"] = nonzero_scale(store_scale(s32, scale_dtype))
    elif fmt in MX_ELEMENT:
        amax = nudge(np.maximum(np.abs(lo), np.abs(hi)), scale_rel)
        out["e8m0"] = e8m0_encode(e8m0_exponent(amax, MX_ELEMENT[fmt][1]))
        out["scale"] = e8m0_decode(out["e8m0"])
    elif fmt == "nvfp4":
        amax = np.maximum(np.abs(lo), np.abs(hi))
        ts = float(nonzero_scale(f32(np.max(amax) / (E4M3_MAX * E2M1_MAX))))
        v = nudge(np.clip(amax / E2M1_MAX / ts, 0.0, E4M3_MAX), eps + 2 * scale_rel)
        b8 = np.clip(v, 0.0, E4M3_MAX).astype(ml_dtypes.float8_e4m3fn).astype(np.float64)
        out.update(b8=b8, ts=ts, scale=f32(b8 * ts))  # 0 where the E4M3 block scale underflows
    else:
        amax = np.maximum(np.abs(lo), np.abs(hi))
        s32 = nonzero_scale(f32(amax / element_qmax(fmt)))
        if double_quant:
            out["scale"], out["atol"], *out["dq"] = _double_quantize(s32, eps, shift)
        else:
            if scale_dtype == "bfloat16":
                s32 = nudge(s32, eps + scale_rel)
            out["scale"] = nonzero_scale(store_scale(s32, scale_dtype))
    if scale_rel and fmt not in MX_ELEMENT:
        out["atol"] = out["atol"] + 2 * scale_rel * np.abs(out["scale"])
    return out


def _elements(xb, fmt, params, shape, block, elem_eps) -> RefVariant:
    scale, zp = params["scale"], params["zp"]
    enc_scale = np.where(scale != 0, scale, 1.0)      # an underflowed scale encodes against 1
    u = xb / enc_scale[..., None]
    z = zp[..., None] if zp is not None else 0.0

    def enc(v):  # (no "+ 0.0" for symmetric formats: it would turn -0.0, E2M1 code 8, into +0)
        return encode(v + z if zp is not None else v, fmt)

    codes_b = enc(u)
    rel = elem_eps + params["atol"] / np.maximum(np.abs(enc_scale), 1e-300)
    half = rel[..., None] * np.abs(u) + elem_eps * np.abs(z)
    amb_b = _window_differs(enc, u, half)
    vals_b = (decode(codes_b, fmt) - z) * scale[..., None]
    codes = from_blocks(codes_b, shape, block)        # padding positions are dropped
    codes = codes.astype(np.float64 if fmt in FP8_DTYPES or fmt == "mxfp8" else np.int64)
    return RefVariant(scale, None if zp is None else zp.astype(np.int64), codes,
                      from_blocks(vals_b, shape, block), from_blocks(amb_b, shape, block))


def reference_quantize(
    x,
    fmt: str,
    block: Sequence[int],
    scale_dtype: str = "float32",
    double_quant: bool = False,
    clipping: dict | None = None,
    eps: float = EPS,
) -> RefQuant:
    """Quantize then dequantize x (any float dtype; used as its exact f64 values) in float64."""
    x = np.asarray(x).astype(np.float64)
    shape = tuple(x.shape)
    block = tuple(int(b) for b in block)
    if len(block) != x.ndim:
        raise ValueError("block must have the array's rank")
    xb = to_blocks(x, block)                      # NaN padded
    method = (clipping or {}).get("method", "minmax")
    # percentile ranges come from an f32 interpolation in jaxquant: every scale derived from them
    # is uncertain by REDUCTION_EPS relative (twice that for NVFP4's block / tensor ratio)
    scale_rel = REDUCTION_EPS if method == "percentile" else 0.0
    lo, hi = block_range(xb, fmt in UINT_BITS, clipping)
    xb = np.where(np.isnan(xb), 0.0, xb)          # padding never reaches the result
    # MX scales are powers of two: x / 2^e is exact in f32 as in f64 (exact ties are decided by
    # the same round-half-even rule), so only an uncertain (percentile) range leaves a window.
    elem_eps = scale_rel if fmt in MX_ELEMENT else eps
    params = [_block_params(fmt, lo, hi, scale_dtype, double_quant, scale_rel, eps, sh)
              for sh in (0, -1, 1)]
    variants = [_elements(xb, fmt, p, shape, block, elem_eps) for p in params]
    p0, v0 = params[0], variants[0]
    block_tie = np.zeros(lo.shape, bool)
    for p in params[1:]:
        block_tie |= p["scale"] != p0["scale"]
        if p0["zp"] is not None:
            block_tie |= p["zp"] != p0["zp"]
    dq = p0.get("dq") or (None, None, None)
    return RefQuant(
        format=fmt, shape=shape, block=block, values=v0.values, codes=v0.codes, scale=v0.scale,
        zero_point=v0.zero_point,
        ambiguous=v0.ambiguous | broadcast_blocks(block_tie, shape, block),
        scale_atol=p0["atol"], variants=variants, e8m0=p0.get("e8m0"),
        block_scale_e4m3=p0.get("b8"), tensor_scale=p0.get("ts"),
        dq_mean=dq[0], dq_codes=dq[1], dq_scales=dq[2],
    )


# ----------------------------------------------------------------------------------------------
# MSE clipping reference: the best per-block error over the documented candidate ratios
# ----------------------------------------------------------------------------------------------

def mse_block_errors(x, fmt: str, block: Sequence[int], grid: int = 20, max_shrink: float = 0.2,
                     norm: float = 2.0, scale_dtype: str = "float32") -> np.ndarray:
    """Errors sum |x - deq|^norm per block for every ratio r_i = 1 - max_shrink * i / grid,
    i = 0..grid: array of shape (grid + 1,) + G. NVFP4 keeps the tensor scale of the unclipped
    tensor (amax / (448 * 6)) and searches the E4M3 block scales only."""
    x = np.asarray(x).astype(np.float64)
    xb = to_blocks(x, block)
    lo0, hi0 = np.nanmin(xb, -1), np.nanmax(xb, -1)
    tensor_amax = float(np.nanmax(np.abs(xb)))
    out = []
    for i in range(grid + 1):
        r = 1.0 - max_shrink * i / grid
        ref = _quantize_with_range(x, fmt, tuple(block), lo0 * r, hi0 * r, scale_dtype,
                                   tensor_amax)
        err = np.abs(to_blocks(ref, block, 0.0) - to_blocks(x, block, 0.0)) ** norm
        out.append(err.sum(-1))
    return np.stack(out)


def _quantize_with_range(x, fmt, block, lo, hi, scale_dtype, tensor_amax=None):
    """Dequantized x with given per-block ranges (min-max machinery with a forced range)."""
    xb = to_blocks(x, block, 0.0)
    if fmt in UINT_BITS:
        levels = uint_levels(fmt)
        lo_, hi_ = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
        width = f32(hi_ - lo_)
        zp = np.clip(np.where(width > 0, np.rint(-lo_ * levels / np.where(width > 0, width, 1)),
                              0), 0, levels)
        scale = nonzero_scale(store_scale(nonzero_scale(width / levels), scale_dtype))
    elif fmt in MX_ELEMENT:
        zp = None
        scale = e8m0_decode(e8m0_encode(e8m0_exponent(np.maximum(-lo, hi), MX_ELEMENT[fmt][1])))
    elif fmt == "nvfp4":
        zp = None
        amax = np.maximum(np.abs(lo), np.abs(hi))
        t_amax = np.max(amax) if tensor_amax is None else tensor_amax
        ts = float(nonzero_scale(f32(t_amax / (E4M3_MAX * E2M1_MAX))))
        b8 = np.clip(amax / E2M1_MAX / ts, 0, E4M3_MAX).astype(ml_dtypes.float8_e4m3fn)
        scale = f32(b8.astype(np.float64) * ts)
    else:
        zp = None
        amax = np.maximum(np.abs(lo), np.abs(hi))
        scale = nonzero_scale(store_scale(nonzero_scale(f32(amax / element_qmax(fmt))),
                                          scale_dtype))
    enc_scale = np.where(scale != 0, scale, 1.0)
    z = zp[..., None] if zp is not None else 0.0
    codes = encode(xb / enc_scale[..., None] + z, fmt)
    vals = (decode(codes, fmt) - z) * scale[..., None]
    return from_blocks(vals, x.shape, block)


# ----------------------------------------------------------------------------------------------
# nibble packing reference
# ----------------------------------------------------------------------------------------------

def pack_nibbles(codes, axis: int) -> np.ndarray:
    """codes[..., 2i, ...] in the low nibble, codes[..., 2i + 1, ...] in the high nibble; an odd
    length is padded with a zero code."""
    c = np.moveaxis(np.asarray(codes, np.uint8), axis, -1)
    if c.shape[-1] % 2:
        c = np.concatenate([c, np.zeros(c.shape[:-1] + (1,), np.uint8)], -1)
    packed = (c[..., 0::2] & 0xF) | ((c[..., 1::2] & 0xF) << 4)
    return np.moveaxis(packed.astype(np.uint8), -1, axis)


def signed_to_nibble(v) -> np.ndarray:
    return (np.asarray(v, np.int64) % 16).astype(np.uint8)


def nibble_to_signed(c) -> np.ndarray:
    c = np.asarray(c, np.int64)
    return np.where(c >= 8, c - 16, c)


def ulp32(v) -> np.ndarray:
    """Spacing of f32 at |v|."""
    return np.spacing(np.abs(np.asarray(v, np.float32))).astype(np.float64)



# ----------------------------------------------------------------------------------------------
# comparing jaxquant's output (as NumPy arrays) with the reference
# ----------------------------------------------------------------------------------------------

#: How far jaxquant's f32 block scale may be from the reference's, in f32 ulps of the scale. XLA
#: rewrites a division by a constant (amax / qmax, width / levels, amax / 6) into a multiplication
#: by the f32-rounded reciprocal, so jaxquant's f32 scale may be one ulp off the correctly rounded
#: quotient that this module computes; 2 ulps leaves room for one more rounding.
SCALE_ULPS = 2

#: Smallest normal f32; scales below it may be flushed to zero by the platform.
F32_TINY = float(np.finfo(np.float32).tiny)

#: Largest fraction of elements that may be marked ambiguous on random data before a comparison
#: is considered too weak to mean anything. Element-level near-ties are ~0.1% of random data;
#: block-level ones flag a whole block at once, so one flagged block of a 48-block grid is 2%.
MAX_AMBIGUOUS_FRACTION = 0.05


def as_reference_codes(fmt: str, codes) -> np.ndarray:
    """jaxquant's unpacked codes (QArray.codes()) -> the representation `encode` uses."""
    c = np.asarray(codes)
    if fmt in SIGNED_INT_BITS:
        return nibble_to_signed(c) if fmt in PACKED_FORMATS else c.astype(np.int64)
    if fmt in FP8_DTYPES or fmt == "mxfp8":
        return c.astype(np.float64)
    return c.astype(np.int64)


def check_against_reference(ref: RefQuant, codes, block_scale, values_f32, zero_point=None,
                            max_ambiguous: float = MAX_AMBIGUOUS_FRACTION) -> dict:
    """Assert that jaxquant's result matches the reference; returns counts for reporting.

    codes:       jaxquant's codes in the representation of `encode` (see as_reference_codes).
    block_scale: jaxquant's effective f32 block scales (QArray.block_scale()), grid shape.
    values_f32:  jaxquant's dequantize(float32), logical shape.
    zero_point:  jaxquant's zero-points (asymmetric formats), grid shape, or None.

    Rules: (1) in every block, jaxquant's scale (and zero-point) is that of one of the
    reference's variants: equal within scale_atol + SCALE_ULPS f32 ulps (exactly for MX powers of
    two); the variants differ only where a block-level decision is a near-tie. (2) Against that
    variant, outside its element-level near-ties, codes are equal and dequantized values agree
    within |decode(code) - zero_point| * (scale tolerance) + 1 f32 ulp. (3) At element near-ties,
    integer codes differ by at most one step. (4) At most `max_ambiguous` of the elements are
    element-level near-ties.
    """
    codes = np.asarray(codes)
    bs = np.asarray(block_scale, np.float64)
    vals = np.asarray(values_f32, np.float64)
    assert codes.shape == ref.shape and vals.shape == ref.shape, (codes.shape, vals.shape, ref.shape)
    assert bs.shape == ref.scale.shape, (bs.shape, ref.scale.shape)
    exact = ref.format in MX_ELEMENT
    chosen = np.full(bs.shape, -1)
    for i, var in enumerate(ref.variants):
        s_tol = 0.0 if exact else ref.scale_atol + SCALE_ULPS * ulp32(var.scale)
        match = np.abs(bs - var.scale) <= s_tol
        # E8M0 code 0 is 2^-127, an f32 subnormal: XLA on CPU flushes it to 0 when decoding
        match |= exact & (bs == 0) & (var.scale < F32_TINY)
        if zero_point is not None:
            match &= np.asarray(zero_point).astype(np.int64) == var.zero_point
        chosen = np.where((chosen < 0) & match, i, chosen)
    bad = chosen < 0
    assert not bad.any(), (
        f"{ref.format}: {int(bad.sum())} block scales / zero-points differ, e.g. at "
        f"{tuple(int(i) for i in np.argwhere(bad)[0])}: jaxquant scale {bs[bad][0]!r} vs "
        f"reference {ref.scale[bad][0]!r}"
        + ("" if zero_point is None else
           f", zero-point {np.asarray(zero_point)[bad][0]} vs {ref.zero_point[bad][0]}")
    )
    pick = broadcast_blocks(chosen, ref.shape, ref.block)

    def sel(name):
        return np.choose(pick, [getattr(v, name) for v in ref.variants])

    r_codes, r_vals, amb = sel("codes"), sel("values"), sel("ambiguous")
    r_scale = np.choose(chosen, [v.scale for v in ref.variants])
    s_tol = np.zeros(bs.shape) if exact else ref.scale_atol + SCALE_ULPS * ulp32(r_scale)
    frac = float(amb.mean()) if amb.size else 0.0
    assert frac <= max_ambiguous, f"{ref.format}: {frac:.3%} of elements are near-ties"
    ok = ~amb
    bad_code = (codes != r_codes) & ok
    assert not bad_code.any(), (
        f"{ref.format}: {int(bad_code.sum())} codes differ outside near-ties, e.g. at "
        f"{tuple(int(i) for i in np.argwhere(bad_code)[0])}: jaxquant {codes[bad_code][0]!r} vs "
        f"reference {r_codes[bad_code][0]!r}"
    )
    if ref.zero_point is None:
        zp = 0.0
    else:
        zp = broadcast_blocks(np.choose(chosen, [v.zero_point for v in ref.variants]),
                              ref.shape, ref.block)
    mag = np.abs(decode(r_codes, ref.format) - zp)
    v_tol = mag * broadcast_blocks(s_tol, ref.shape, ref.block) + ulp32(r_vals)
    bad_val = (np.abs(vals - r_vals) > v_tol) & ok
    assert not bad_val.any(), (
        f"{ref.format}: {int(bad_val.sum())} dequantized values differ, e.g. at "
        f"{tuple(int(i) for i in np.argwhere(bad_val)[0])}: jaxquant {vals[bad_val][0]!r} vs "
        f"reference {r_vals[bad_val][0]!r}"
    )
    if ref.format in SIGNED_INT_BITS or ref.format in UINT_BITS:
        assert (np.abs(codes.astype(np.int64) - r_codes) <= 1).all(), (
            f"{ref.format}: codes at near-ties differ by more than one step")
    return {"near_ties": int(amb.sum()), "differ_at_ties": int(((codes != r_codes) & amb).sum()),
            "blocks_on_variant": int((chosen > 0).sum())}
