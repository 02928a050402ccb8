"""W4A16: every backend on the shared case list against a float64 reference (CPU: Pallas in
interpret mode), plus argument errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxquant.kernels._common import KernelArgumentError, UnsupportedShapeError
from jaxquant.kernels.w4a16 import Int4Weights, W4A16Config, w4a16_matmul
from jaxquant.kernels.w4a16.reference import dequantize

from kernel_cases import W4_CASES, make_w4, w4_reference64

BACKENDS = {
    "xla": dict(implementation="xla"),
    # default heuristic config of the Pallas kernel (prefetch, split-K, epilogue scales)
    "triton": dict(implementation="triton"),
    # small tiles: many programs, split-K partials, masked edges, bit-trick dequant
    "triton_small": dict(implementation="triton", config=W4A16Config(
        16, 32, 64, 3, 4, 1, True, "bits", "epilogue")),
    # prefill-style: weight-scaled tile, no prefetch, transposed product, plain conversions
    "triton_weight_swap": dict(implementation="triton", config=W4A16Config(
        32, 32, 128, 1, 4, 1, False, "convert", "weight", True)),
    # prefill: Pallas dequantization kernel then XLA's bf16 dot
    "triton_dequant_dot": dict(implementation="triton", config=W4A16Config(mode="dequant_dot", dequant="bits")),
}


def _weights(q, s, z):
    return Int4Weights(jnp.asarray(q), jnp.asarray(s, jnp.bfloat16), None if z is None else jnp.asarray(z))


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("case", W4_CASES, ids=str)
def test_w4a16_matches_float64(case, backend):
    x, q, s, z = make_w4(case, seed=hash(case.name) % 1000)
    ref = w4_reference64(x, q, s, z, case.K, case.group)
    out = w4a16_matmul(jnp.asarray(x, jnp.bfloat16), _weights(q, s, z), group_size=case.group,
                       **BACKENDS[backend])
    assert out.shape == (case.M, case.N) and out.dtype == jnp.bfloat16
    o = np.asarray(out.astype(jnp.float32), np.float64)
    assert np.all(np.isfinite(o))
    err = np.linalg.norm(o - ref) / np.linalg.norm(ref)
    assert err < 8e-3, f"{backend} {case}: relative error {err:.2e}"
    # elementwise: within bf16 rounding of the largest output
    assert np.max(np.abs(o - ref)) <= 1.5e-2 * np.max(np.abs(ref))


def test_dequantize_matches_reference():
    case = W4_CASES[3]
    x, q, s, z = make_w4(case)
    w = dequantize(_weights(q, s, z), case.K, case.group, jnp.float32)
    eye = np.eye(case.K, dtype=np.float32)
    np.testing.assert_allclose(np.asarray(w), w4_reference64(eye, q, s, z, case.K, case.group), rtol=1e-6, atol=1e-7)


def test_leading_dims_and_tuple_weights():
    case = W4_CASES[0]
    x, q, s, z = make_w4(case)
    x3 = jnp.asarray(np.stack([x, x]), jnp.bfloat16)  # [2, 1, K]
    out = w4a16_matmul(x3, (jnp.asarray(q), jnp.asarray(s, jnp.bfloat16)), group_size=case.group)
    assert out.shape == (2, 1, case.N)


def test_default_falls_back_to_xla_for_unsupported_group():
    rng = np.random.default_rng(0)
    K, N, g = 96, 16, 48  # 48 is not a multiple of 32
    q = jnp.asarray(rng.integers(0, 256, (K // 2, N)), jnp.uint8)
    s = jnp.full((K // g, N), 0.01, jnp.bfloat16)
    x = jnp.ones((2, K), jnp.bfloat16)
    out = w4a16_matmul(x, (q, s), group_size=g)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(w4a16_matmul(x, (q, s), group_size=g, implementation="xla")))
    with pytest.raises(UnsupportedShapeError, match="multiple of 32"):
        w4a16_matmul(x, (q, s), group_size=g, implementation="triton")


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda x, q, s, z: (x.astype(jnp.float32), q, s, z), "x must be bfloat16"),
        (lambda x, q, s, z: (x, q.astype(jnp.int8), s, z), "qvalue must be uint8"),
        (lambda x, q, s, z: (x, q[:-1], s, z), "packed rows"),
        (lambda x, q, s, z: (x, q, s[:-1], z), "scale must have shape"),
        (lambda x, q, s, z: (x, q, s, jnp.zeros(s.shape, jnp.int32)), "zero_point must be uint8"),
    ],
)
def test_argument_errors_name_the_argument(mutate, match):
    case = W4_CASES[1]
    x, q, s, z = make_w4(case)
    x, q, s, z = mutate(jnp.asarray(x, jnp.bfloat16), jnp.asarray(q), jnp.asarray(s, jnp.bfloat16), jnp.asarray(z))
    with pytest.raises(KernelArgumentError, match=match):
        w4a16_matmul(x, Int4Weights(q, s, z), group_size=case.group)


def test_bad_options():
    x, q, s, z = make_w4(W4_CASES[0])
    w = (jnp.asarray(q), jnp.asarray(s, jnp.bfloat16))
    xb = jnp.asarray(x, jnp.bfloat16)
    with pytest.raises(KernelArgumentError, match="group_size"):
        w4a16_matmul(xb, w, group_size=0)
    with pytest.raises(KernelArgumentError, match="implementation"):
        w4a16_matmul(xb, w, group_size=128, implementation="cuda")
    with pytest.raises(UnsupportedShapeError, match="layout 'nk'.*to_nk"):
        w4a16_matmul(xb, w, group_size=128, implementation="mosaic_gpu")
    with pytest.raises(ValueError, match="power of two"):
        W4A16Config(block_n=96)


def test_jit_and_config_roundtrip():
    cfg = W4A16Config(32, 64, 128, 2, 4, 2, False, "bits", "weight")
    assert W4A16Config.from_dict(cfg.to_dict()) == cfg
    case = W4_CASES[2]
    x, q, s, z = make_w4(case)
    f = jax.jit(lambda x, q, s: w4a16_matmul(x, (q, s), group_size=case.group, implementation="triton", config=cfg))
    out = f(jnp.asarray(x, jnp.bfloat16), jnp.asarray(q), jnp.asarray(s, jnp.bfloat16))
    ref = w4_reference64(x, q, s, None, case.K, case.group)
    assert np.linalg.norm(np.asarray(out, np.float64) - ref) < 8e-3 * np.linalg.norm(ref)
