"""Autotune the W4A16 kernel on the benchmark shapes of M <= 128 (device-timed sweeps of
config.candidates) into $JAXQUANT_AUTOTUNE_CACHE, then explore FP8 XLA variants.
PYTHONUNBUFFERED=1 JAXQUANT_AUTOTUNE_CACHE=$OUT/autotune.json python -m jaxquant.kernels.benchmarks.tune"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp

from jaxquant.kernels.benchmarks import harness as H
from jaxquant.kernels.w4a16 import arg_specs
from jaxquant.kernels.w4a16.api import _pick_config
from jaxquant.kernels.w4a16.layouts import Int4Weights


def tune_w4(dl, max_m=128):
    for M, K, N, g in arg_specs.BENCH_SHAPES:
        if M > max_m or not dl.ok(30):
            continue
        w = Int4Weights(jnp.zeros((K // 2, N), jnp.uint8), jnp.zeros((K // g, N), jnp.bfloat16))
        x = jnp.zeros((M, K), jnp.bfloat16)
        cfg = _pick_config(M, K, N, g, w, x, True, False)
        print("tuned", M, K, N, cfg, flush=True)


def fp8_variants(dl):
    from jaxquant.kernels.fp8_matmul import reference as R
    from jaxquant.kernels.fp8_matmul.layouts import Fp8Weights

    for S in (4096, 8192):
        if not dl.ok(40):
            return
        M = K = N = S
        keys = jax.random.split(jax.random.key(S), 12)
        wkn = [Fp8Weights(jax.random.normal(k, (K, N), jnp.float32).astype(jnp.float8_e4m3fn),
                          jnp.full((N,), 0.01, jnp.float32)) for k in keys]
        wnk = [Fp8Weights(w.qvalue.T.copy(), w.scale, "nk") for w in wkn]
        wb = [w.qvalue.astype(jnp.bfloat16) for w in wkn]
        x = jax.random.normal(jax.random.key(1), (M, K), jnp.bfloat16)
        fns = {
            "bf16": (lambda x, w: jnp.dot(x, w), wb),
            "pt_kn": (lambda x, w: R.fp8_per_tensor_xla(x, w, jnp.float32(0.01)), wkn),
            "pc_f32_kn": (lambda x, w: R.fp8_matmul_reference(x, w), wkn),
            "pc_f32_nk": (lambda x, w: R.fp8_matmul_reference(x, w), wnk),
            "pc_bf16_kn": (lambda x, w: R.fp8_matmul_reference(x, w, gemm_out=jnp.bfloat16), wkn),
            "pc_bf16_nk": (lambda x, w: R.fp8_matmul_reference(x, w, gemm_out=jnp.bfloat16), wnk),
        }
        for name, (fn, ws) in fns.items():
            us, _, _ = H.time_fn(fn, x, ws)
            d, brk = H.device_time(fn, x, ws, iters=2)
            print(f"fp8 S={S} {name}: wall {us:.1f} us, device {d:.1f} us, {[(k[:30], round(v, 1)) for k, v in brk.items()]}", flush=True)


if __name__ == "__main__":
    dl = H.Deadline(float(os.environ.get("BUDGET_S", "450")))
    what = sys.argv[1:] or ["w4", "fp8"]
    print("device", jax.devices()[0].device_kind, flush=True)
    if "fp8" in what:
        fp8_variants(dl)
    if "w4" in what:
        tune_w4(dl)
