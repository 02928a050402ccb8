"""FP8 W8A8: every backend on the shared case list against a float64 reference (CPU: Pallas
in interpret mode), plus argument errors."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxquant.kernels._common import KernelArgumentError
from jaxquant.kernels.fp8_matmul import Fp8Config, Fp8Weights, fp8_matmul, prepare_fp8_weights, quantize_per_token
from jaxquant.kernels.fp8_matmul.pallas_triton import quantize_per_token_pallas

from kernel_cases import FP8_CASES, fp8_reference64, make_fp8

BACKENDS = {
    "xla": dict(implementation="xla"),
    "triton": dict(implementation="triton"),
    "triton_small_pallas_quant": dict(implementation="triton", config=Fp8Config(16, 32, 64, 2, 4, 2, quant="pallas")),
}


def _weights(wq, sw, layout):
    w = Fp8Weights(jnp.asarray(wq, jnp.float8_e4m3fn), jnp.asarray(sw))
    return prepare_fp8_weights(w) if layout == "nk" else w


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("case", FP8_CASES, ids=str)
def test_fp8_matches_float64(case, backend):
    x, wq, sw = make_fp8(case, seed=len(case.name))
    ref = fp8_reference64(x, wq, sw)
    out = fp8_matmul(jnp.asarray(x, jnp.bfloat16), _weights(wq, sw, case.layout), **BACKENDS[backend])
    assert out.shape == (case.M, case.N) and out.dtype == jnp.bfloat16
    o = np.asarray(out.astype(jnp.float32), np.float64)
    assert np.all(np.isfinite(o))
    err = np.linalg.norm(o - ref) / np.linalg.norm(ref)
    assert err < 1e-2, f"{backend} {case}: relative error {err:.2e}"
    if case.special == "zero_row":
        assert np.all(o[2] == 0)
    # and close to the unquantized product (E4M3 activations: a few percent)
    full = x.astype(np.float64) @ (wq.astype(np.float64) * sw[None, :])
    assert np.linalg.norm(o - full) / np.linalg.norm(full) < 0.08


def test_pallas_quantizer_matches_xla():
    x, _, _ = make_fp8(FP8_CASES[2])
    xb = jnp.asarray(x, jnp.bfloat16)
    q1, s1 = quantize_per_token(xb)
    q2, s2 = quantize_per_token_pallas(xb, interpret=True)
    np.testing.assert_allclose(np.asarray(s1), np.asarray(s2), rtol=1e-7)
    d = np.abs(np.asarray(q1.astype(jnp.float32)) - np.asarray(q2.astype(jnp.float32)))
    assert np.mean(d > 0) < 0.01  # x / s vs x * (1 / s): rare one-ulp rounding differences


def test_fp8_argument_errors():
    x, wq, sw = make_fp8(FP8_CASES[0])
    xb = jnp.asarray(x, jnp.bfloat16)
    w = _weights(wq, sw, "kn")
    with pytest.raises(KernelArgumentError, match="float8_e4m3fn"):
        fp8_matmul(xb, (w.qvalue.astype(jnp.bfloat16), w.scale))
    with pytest.raises(KernelArgumentError, match="K="):
        fp8_matmul(xb[:, :-1], w)
    with pytest.raises(KernelArgumentError, match="scale"):
        fp8_matmul(xb, (w.qvalue, w.scale[:-1]))
    with pytest.raises(KernelArgumentError, match="x must be"):
        fp8_matmul(xb.astype(jnp.int32), w)
    with pytest.raises(KernelArgumentError, match="implementation"):
        fp8_matmul(xb, w, implementation="tpu")
