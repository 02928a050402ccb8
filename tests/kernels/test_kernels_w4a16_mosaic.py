"""W4A16 in the GPU layout "nk": the Mosaic GPU kernel (Hopper only) and the XLA path on the
shared case list against float64, the relayout, the autotuner's candidates, and errors."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxquant.kernels._common import KernelArgumentError, UnsupportedShapeError, gpu_info
from jaxquant.kernels.w4a16 import Int4Weights, MosaicConfig, to_nk, w4a16_matmul
from jaxquant.kernels.w4a16 import mosaic_gpu as mg
from jaxquant.kernels.w4a16.reference import dequantize

from kernel_cases import W4_MOSAIC_CASES, make_w4, w4_reference64

ON_HOPPER = gpu_info() is not None and gpu_info()[2] >= 90
needs_hopper = pytest.mark.skipif(not ON_HOPPER, reason="the Mosaic GPU kernel needs sm_90")

# the configs a GPU run checks: default heuristic, epilogue scales, 256-wide K steps,
# 128-channel tiles with deep split-K and few stages
CONFIGS = {
    "default": None,
    "epilogue": lambda c: dataclasses.replace(c, scale_mode="epilogue"),
    "bk256": lambda c: dataclasses.replace(c, block_k=256),
    "bn128_split": lambda c: dataclasses.replace(c, block_n=128, split_k=4, stages=2),
}


def _nk(q, s, z, K):
    w = Int4Weights(jnp.asarray(q), jnp.asarray(s, jnp.bfloat16),
                    None if z is None else jnp.asarray(z))
    return to_nk(w, K)


def _check(out, ref, what):
    o = np.asarray(out.astype(jnp.float32), np.float64)
    assert np.all(np.isfinite(o)), what
    err = np.linalg.norm(o - ref) / np.linalg.norm(ref)
    assert err < 8e-3, f"{what}: relative error {err:.2e}"
    assert np.max(np.abs(o - ref)) <= 1.5e-2 * np.max(np.abs(ref)), what


@pytest.mark.parametrize("case", W4_MOSAIC_CASES, ids=str)
def test_nk_layout_xla_matches_float64(case):
    x, q, s, z = make_w4(case, seed=hash(case.name) % 1000)
    ref = w4_reference64(x, q, s, z, case.K, case.group)
    w = _nk(q, s, z, case.K)
    out = w4a16_matmul(jnp.asarray(x, jnp.bfloat16), w, group_size=case.group,
                       implementation="xla")
    assert out.shape == (case.M, case.N) and out.dtype == jnp.bfloat16
    _check(out, ref, case.name)


@needs_hopper
@pytest.mark.parametrize("cfg", list(CONFIGS))
@pytest.mark.parametrize("case", W4_MOSAIC_CASES, ids=str)
def test_mosaic_matches_float64(case, cfg):
    x, q, s, z = make_w4(case, seed=hash(case.name) % 1000)
    ref = w4_reference64(x, q, s, z, case.K, case.group)
    w = _nk(q, s, z, case.K)
    config = None
    if CONFIGS[cfg] is not None:
        base = mg.default_config(case.M, case.K, case.N, case.group)
        config = CONFIGS[cfg](base)
        if case.N % config.block_n:
            pytest.skip(f"N={case.N} does not tile by {config.block_n}")
    out = jax.jit(lambda a, b: w4a16_matmul(a, b, group_size=case.group,
                                            implementation="mosaic_gpu", config=config))(
        jnp.asarray(x, jnp.bfloat16), w)
    _check(out, ref, f"{case.name} {cfg}")


@pytest.mark.parametrize("asym", [False, True])
def test_to_nk_keeps_the_dequantized_weight(asym):
    rng = np.random.default_rng(1)
    K, N, g = 256, 64, 128
    q = jnp.asarray(rng.integers(0, 256, (K // 2, N)), jnp.uint8)
    s = jnp.asarray(rng.uniform(0.01, 0.02, (K // g, N)), jnp.bfloat16)
    z = jnp.asarray(rng.integers(0, 16, (K // g, N)), jnp.uint8) if asym else None
    w = Int4Weights(q, s, z)
    nk = to_nk(w, K)
    assert nk.layout == "nk" and nk.qvalue.dtype == jnp.int4 and nk.qvalue.shape == (N, K)
    np.testing.assert_array_equal(np.asarray(dequantize(nk, K, g, jnp.float32)),
                                  np.asarray(dequantize(w, K, g, jnp.float32)))
    assert to_nk(nk, K) is nk


def test_errors_name_the_fix():
    rng = np.random.default_rng(0)
    K, N, g = 256, 64, 128
    w = Int4Weights(jnp.asarray(rng.integers(0, 256, (K // 2, N)), jnp.uint8),
                    jnp.ones((K // g, N), jnp.bfloat16))
    x = jnp.ones((2, K), jnp.bfloat16)
    with pytest.raises(UnsupportedShapeError, match="to_nk"):
        w4a16_matmul(x, w, group_size=g, implementation="mosaic_gpu")
    nk = to_nk(w, K)
    with pytest.raises(UnsupportedShapeError, match="layout 'nk'|not read by the Triton"):
        w4a16_matmul(x, nk, group_size=g, implementation="triton")
    bad = dataclasses.replace(nk, scale=nk.scale.astype(jnp.float32))
    with pytest.raises(KernelArgumentError, match="bfloat16"):
        w4a16_matmul(x, bad, group_size=g)
    with pytest.raises(KernelArgumentError, match="int4"):
        w4a16_matmul(x, dataclasses.replace(nk, qvalue=nk.qvalue.astype(jnp.int8)), group_size=g)
    with pytest.raises(KernelArgumentError, match="even"):
        to_nk(Int4Weights(w.qvalue, jnp.ones((1, N), jnp.bfloat16)), 255)
    if not ON_HOPPER:
        with pytest.raises(UnsupportedShapeError, match="Hopper"):
            w4a16_matmul(x, nk, group_size=g, implementation="mosaic_gpu")


def test_supported_and_configs():
    assert mg.supported(1, 4096, 4096, 128) is None
    assert "multiple of 128" in mg.supported(1, 4000, 4096, 128)
    assert "multiple of 64" in mg.supported(1, 4096, 4000, 128)
    assert "group_size=32" in mg.supported(1, 4096, 4096, 32)
    assert "prefill" in mg.supported(mg.MAX_M + 1, 4096, 4096, 128)
    assert mg.fit_split(8192, 5) == 4 and mg.fit_split(4096, 1000) == 32
    for m in (1, 16, 128, 256):
        cands = mg.candidates(m, 4096, 14336, 128)
        assert cands[0] == mg.default_config(m, 4096, 14336, 128)
        assert len(set(cands)) == len(cands)
        for c in cands:
            assert (4096 // c.block_k) % c.split_k == 0 and 14336 % c.block_n == 0
            assert MosaicConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="block_m"):
        MosaicConfig(block_m=12)
    with pytest.raises(ValueError, match="scale_mode"):
        MosaicConfig(scale_mode="both")
