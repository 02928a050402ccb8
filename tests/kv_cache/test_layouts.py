"""The KV cache codec: codes, scales and packing against a float64 NumPy reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxquant.errors import JaxquantError
from jaxquant.kernels.decode_attention.layouts import (
    KVCacheSpec,
    dequantize_rows,
    quantize_rows,
    unpack_int4,
)
from kv_reference import QMAX, quantize_np

CASES = [("int8", None), ("int8", 16), ("fp8", None), ("fp8", 32), ("int4", None), ("int4", 8)]


@pytest.mark.parametrize("fmt,group", CASES)
def test_round_trip_matches_numpy(fmt, group):
    x = np.asarray(jax.random.normal(jax.random.key(1), (3, 5, 64)), np.float64)
    x[0, 1, 7] = 40.0  # an outlier channel
    x[1, 2] = 0.0  # an all-zero row
    spec = KVCacheSpec(fmt, group)
    codes, scales = quantize_rows(jnp.asarray(x, jnp.float32), spec)
    assert codes.dtype == spec.dtype and codes.shape == (3, 5, spec.packed_dim(64))
    assert scales.dtype == jnp.float32 and scales.shape == (3, 5, 64 // (group or 64))
    got = np.asarray(dequantize_rows(codes, scales, spec), np.float64)
    ref, ref_scale = quantize_np(x, fmt, group or 64)
    np.testing.assert_allclose(np.asarray(scales), ref_scale, rtol=1e-6)
    step = np.repeat(ref_scale, group or 64, axis=-1)  # one code step per channel
    close = np.isclose(got, ref, rtol=1e-6, atol=1e-12)
    assert close.mean() > 0.99  # the same code; f32 vs f64 division may round a tie apart:
    apart = np.abs(got - ref)[~close]  # then by one code step at most
    assert np.all(apart <= (np.abs(ref) / 8 if fmt == "fp8" else step)[~close] * 1.0001)
    assert np.all(got[1, 2] == 0) and np.all(np.asarray(scales)[1, 2] == 0)  # exact zeros
    err = np.abs(got - x) / np.maximum(step * QMAX[fmt], 1e-30)
    assert err.max() <= (2 ** -4 if fmt == "fp8" else 0.5 / QMAX[fmt]) + 1e-6


def test_int4_packs_half_heads_into_nibbles():
    x = jnp.asarray(np.arange(-7, 9, dtype=np.float32)[None] * np.array([[1.0]]))
    x = x.at[0, -1].set(0.0)  # values -7..7 then 0: scale exactly 1
    codes, scales = quantize_rows(x, KVCacheSpec("int4"))
    assert float(scales[0, 0]) == 1.0
    c = np.asarray(codes[0]).astype(int)
    vals = np.asarray(x[0]).astype(int)
    np.testing.assert_array_equal(c & 0xF, vals[:8] & 0xF)  # channel j in the low nibble
    np.testing.assert_array_equal(c >> 4, vals[8:] & 0xF)  # channel j + D/2 in the high one
    np.testing.assert_array_equal(np.asarray(unpack_int4(codes))[0], vals)


def test_non_finite_stays_in_its_group():
    x = jax.random.normal(jax.random.key(2), (4, 32))
    x = x.at[1, 3].set(jnp.nan).at[2, 30].set(jnp.inf)
    spec = KVCacheSpec("int8", 16)
    got = np.asarray(dequantize_rows(*quantize_rows(x, spec), spec))
    bad = ~np.isfinite(got)
    assert bad[1, :16].all() and bad[2, 16:].any()
    assert np.isfinite(got[[0, 3]]).all() and np.isfinite(got[1, 16:]).all()
    assert np.isfinite(got[2, :16]).all()


def test_float_formats_store_values():
    x = jax.random.normal(jax.random.key(3), (2, 8), jnp.float32)
    codes, scales = quantize_rows(x, KVCacheSpec("bf16"))
    assert scales is None and codes.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(codes), np.asarray(x.astype(jnp.bfloat16)))


def test_bytes_per_token():
    # SmolLM2-135M: 30 layers, 3 KV heads, head_dim 64
    assert KVCacheSpec("float32").bytes_per_token(30, 3, 64) == 2 * 30 * 3 * 64 * 4
    assert KVCacheSpec("bf16").bytes_per_token(30, 3, 64) == 2 * 30 * 3 * 64 * 2
    assert KVCacheSpec("int8").bytes_per_token(30, 3, 64) == 2 * 30 * 3 * (64 + 4)
    assert KVCacheSpec("int4", 32).bytes_per_token(30, 3, 64) == 2 * 30 * 3 * (32 + 8)


def test_bad_specs_name_the_fix():
    with pytest.raises(JaxquantError, match="unknown; use one of"):
        KVCacheSpec("int5")
    with pytest.raises(JaxquantError, match="not bf16; drop it"):
        KVCacheSpec("bf16", 32)
    with pytest.raises(JaxquantError, match="positive int"):
        KVCacheSpec("int8", 0)
    with pytest.raises(JaxquantError, match="does not divide head_dim=64; use one of"):
        KVCacheSpec("int8", 24).groups(64)
    with pytest.raises(JaxquantError, match="even head_dim"):
        quantize_rows(jnp.ones((2, 5)), KVCacheSpec("int4"))
