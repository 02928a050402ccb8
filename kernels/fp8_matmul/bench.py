"""Benchmark of one FP8 W8A8 shape: the kernel (api default path) vs XLA's bf16 dot and
XLA's per-tensor FP8 dot (dynamic activation scale), per shared/GPU_METHOD.md."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxquant.kernels.benchmarks import harness as H
from jaxquant.kernels.fp8_matmul import reference as R
from jaxquant.kernels.fp8_matmul.api import fp8_matmul
from jaxquant.kernels.fp8_matmul.layouts import Fp8Weights, prepare_fp8_weights

FP8_PEAK = 1979e12  # H100 SXM dense fp8 (datasheet)


def bench_shape(M, K, N, bw, *, R_: int = 12, implementation=None, config=None, profile=True) -> dict:
    keys = jax.random.split(jax.random.key(M + K + N), R_)
    wf = [jax.random.normal(k, (K, N), jnp.float32) for k in keys]
    sw = [jnp.max(jnp.abs(w), axis=0) / 448.0 for w in wf]
    wkn = [Fp8Weights((w / s).astype(jnp.float8_e4m3fn), s) for w, s in zip(wf, sw)]
    wnk = [prepare_fp8_weights(w) for w in wkn]
    wt = [(w, jnp.max(w.scale)) for w in wnk]
    wb = [w.astype(jnp.bfloat16) for w in wf]
    del wf
    x = jax.random.normal(jax.random.key(7), (M, K), jnp.bfloat16)
    rows = np.unique(np.linspace(0, M - 1, min(M, 16)).astype(int))
    xq, sx = R.quantize_per_token(x)
    w0 = np.asarray(wkn[0].qvalue.astype(jnp.float32), np.float64) * np.asarray(wkn[0].scale, np.float64)
    ref = (np.asarray(xq.astype(jnp.float32), np.float64) * np.asarray(sx, np.float64)[:, None])[rows] @ w0
    kern = lambda x, w: fp8_matmul(x, w, implementation=implementation, config=config)
    out = jax.jit(kern)(x, wnk[0])
    err = H.rel_err(np.asarray(out.astype(jnp.float32))[rows], ref)
    us, spread, _ = H.time_fn(kern, x, wnk)
    us_bf, _, _ = H.time_fn(lambda x, w: jnp.dot(x, w), x, wb)
    us_pt, _, _ = H.time_fn(lambda x, w: R.fp8_per_tensor_xla(x, w[0], w[1]), x, wt)
    nbytes = M * K * 2 + K * N + M * N * 2
    row = dict(kernel="fp8_matmul", impl=implementation or "default", M=M, K=K, N=N, group=0, us=us,
               spread_us=spread, xla_bf16_us=us_bf, xla_format_us=us_pt,
               floor_us=max(nbytes / bw, 2 * M * N * K / FP8_PEAK) * 1e6, max_rel_err=err,
               tflops=2 * M * N * K / us / 1e6)
    if profile:
        row["dev_us"], brk = H.device_time(kern, x, wnk, iters=2)
        row["dev_kernels"] = {k[:48]: round(v, 2) for k, v in brk.items()}
        row["xla_bf16_dev_us"], _ = H.device_time(lambda x, w: jnp.dot(x, w), x, wb, iters=2)
        row["xla_format_dev_us"], _ = H.device_time(lambda x, w: R.fp8_per_tensor_xla(x, w[0], w[1]), x, wt, iters=2)
        row["vs_bf16_dev"] = row["xla_bf16_dev_us"] / row["dev_us"]
        row["vs_xla_format_dev"] = row["xla_format_dev_us"] / row["dev_us"]
    row["vs_bf16"] = us_bf / us
    row["vs_xla_format"] = us_pt / us
    row["pct_floor"] = 100 * row["floor_us"] / us
    return row
