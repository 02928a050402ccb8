"""Public FP8 W8A8 matmul: per-token dynamic E4M3 activations x per-channel E4M3 weights."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxquant.kernels import autotune
from jaxquant.kernels._common import KernelArgumentError, gpu_info, num_sms
from jaxquant.kernels.fp8_matmul import config as C
from jaxquant.kernels.fp8_matmul import reference as R
from jaxquant.kernels.fp8_matmul.layouts import Fp8Weights, as_fp8_weights, validate

IMPLEMENTATIONS = (None, "xla", "triton", "mosaic_gpu")
OP = "fp8_matmul"


def _pick_config(M, K, N, w: Fp8Weights, tune, interpret):
    sms = num_sms()
    if interpret:
        return C.default_config(M, K, N, sms=sms)
    key = autotune.make_key(OP, C.shape_key(M, K, N, w.layout))
    hit = autotune.lookup(key)
    if hit is not None and tune is not True:
        try:
            return C.Fp8Config.from_dict(hit)
        except (TypeError, ValueError):
            pass
    if tune or (tune is None and autotune.tuning_enabled()):
        from jaxquant.kernels.fp8_matmul.pallas_triton import fp8_matmul_triton

        k1, k2 = jax.random.split(jax.random.key(0))
        xs = jax.random.normal(k1, (M, K), jnp.bfloat16)
        shape = (K, N) if w.layout == "kn" else (N, K)
        ws = Fp8Weights(jax.random.normal(k2, shape, jnp.float32).astype(jnp.float8_e4m3fn),
                        jnp.full((N,), 0.01, jnp.float32), w.layout)
        ref = np.asarray(R.fp8_matmul_reference(xs, ws).astype(jnp.float32))
        xq, sx = R.quantize_per_token(xs)

        def build(cfg):
            f = jax.jit(lambda a, s, b: fp8_matmul_triton(a, s, b, config=cfg))
            return lambda: f(xq, sx, ws)

        def check(out):
            o = np.asarray(out.astype(jnp.float32))
            return bool(np.linalg.norm(o - ref) <= 1e-2 * np.linalg.norm(ref))

        best = autotune.tune(key, C.candidates(M, K, N, sms=sms), build, check)
        if best is not None:
            return best
    return C.default_config(M, K, N, sms=sms)


def fp8_matmul(
    x: jax.Array,
    weights: Any,
    *,
    implementation: str | None = None,
    config: C.Fp8Config | None = None,
    tune: bool | None = None,
    interpret: bool | None = None,
    out_dtype: Any = jnp.bfloat16,
) -> jax.Array:
    """x [..., K] (bf16) x FP8 weights -> [..., N] out_dtype.

    Activations are quantized per token inside the same jitted computation (sx = row amax /
    448); the FP8 x FP8 product accumulates in float32 and the epilogue applies
    sx[m] * scale[n]. weights: Fp8Weights (layout "kn" [K, N] or "nk" [N, K] from
    `prepare_fp8_weights`), a (qvalue [K, N], scale [N]) tuple, or an object with those
    attributes. Use `prepare_fp8_weights` once (layout "nk"): with "kn" XLA transposes the
    weight on every call. implementation: None (currently XLA: measured fastest on H100),
    "xla", "triton" (the Pallas kernel; interpret mode off GPU), "mosaic_gpu" (not provided).
    """
    if implementation not in IMPLEMENTATIONS:
        raise KernelArgumentError(f"implementation={implementation!r}; use one of {IMPLEMENTATIONS}")
    w = as_fp8_weights(weights)
    x = jnp.asarray(x)
    M, K, N = validate(x.shape, x.dtype, w)
    if w.scale.ndim != 1:
        w = Fp8Weights(w.qvalue, w.scale.reshape(N), w.layout)
    lead = x.shape[:-1]
    x2 = x.reshape(M, K)
    if implementation == "mosaic_gpu":
        raise NotImplementedError(
            "fp8_matmul: no Mosaic GPU kernel is provided; use implementation='triton' or None"
        )
    impl = implementation
    if impl is None:
        # Measured on H100 (2026-11-24, kernels/benchmarks/results): XLA's cuBLASLt FP8 GEMM
        # with our per-token/per-channel epilogue fused by XLA runs at ~1500 TFLOP/s on the
        # "nk" layout, the Pallas-Triton kernel at ~480. So the default is XLA everywhere;
        # implementation="triton" runs the Pallas kernel.
        impl = "xla"
    if M == 0 or N == 0:
        return jnp.zeros((*lead, N), out_dtype)
    if impl == "xla":
        return R.fp8_matmul_reference(x2, w, out_dtype=out_dtype).reshape(*lead, N)
    if interpret is None:
        interpret = gpu_info() is None
    from jaxquant.kernels.fp8_matmul.pallas_triton import fp8_matmul_triton, quantize_per_token_pallas

    cfg = config if config is not None else _pick_config(M, K, N, w, tune, interpret)
    if cfg.quant == "pallas":
        xq, sx = quantize_per_token_pallas(x2, interpret=interpret)
    else:
        xq, sx = R.quantize_per_token(x2)
    out = fp8_matmul_triton(xq, sx, w, config=cfg, out_dtype=out_dtype, interpret=interpret)
    return out.reshape(*lead, N)
