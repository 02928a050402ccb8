"""Benchmark of one W4A16 shape: the kernel (api default path) vs XLA's bf16 dot and XLA's
int4 dequantize+dot, following shared/GPU_METHOD.md (see kernels/benchmarks/harness.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxquant.kernels._common import cdiv
from jaxquant.kernels.benchmarks import harness as H
from jaxquant.kernels.w4a16.api import w4a16_matmul
from jaxquant.kernels.w4a16.layouts import LAYOUT_NK, Int4Weights, to_nk
from jaxquant.kernels.w4a16.reference import w4a16_matmul_reference

BF16_PEAK = 989e12  # H100 SXM dense bf16 (datasheet); floors use max(bytes/BW, flops/peak)


def make_weights(key, K, N, g, asym=False):
    kq, ks, kz = jax.random.split(key, 3)
    G = cdiv(K, g)
    q = jax.random.bits(kq, (cdiv(K, 2), N), jnp.uint8)
    s = jax.random.uniform(ks, (G, N), jnp.float32, 0.002, 0.02).astype(jnp.bfloat16)
    z = jax.random.randint(kz, (G, N), 0, 16).astype(jnp.uint8) if asym else None
    return Int4Weights(q, s, z)


def host_dequant64(w: Int4Weights, K, g):
    q = np.asarray(w.qvalue)
    codes = np.stack([q & 0xF, q >> 4], axis=1).reshape(-1, q.shape[1])[:K].astype(np.int64)
    gi = np.arange(K) // g
    if w.zero_point is None:
        v = np.where(codes >= 8, codes - 16, codes)
    else:
        v = codes - np.asarray(w.zero_point).astype(np.int64)[gi]
    return v.astype(np.float64) * np.asarray(w.scale.astype(jnp.float32), np.float64)[gi]


def floor_us(M, K, N, g, bw):
    nbytes = K * N // 2 + cdiv(K, g) * N * 2 + M * K * 2 + M * N * 2
    return max(nbytes / bw, 2 * M * K * N / BF16_PEAK) * 1e6


class ShapeSet:
    """R distinct weights of one (K, N) and their bf16 twins, shared by every M."""

    def __init__(self, K, N, g, seed=0, layout: str = "canonical"):
        self.K, self.N, self.g = K, N, g
        self.R = H.pick_r(K * N * 2)
        keys = jax.random.split(jax.random.key(seed * 7919 + K * 3 + N), self.R)
        self.ws = [make_weights(k, K, N, g) for k in keys]
        self.W64 = host_dequant64(self.ws[0], K, g)
        if layout == LAYOUT_NK:  # what jaxquant.inference.to_gpu_layout gives the Mosaic kernel
            relayout = jax.jit(lambda w: to_nk(w, K))
            self.ws = [relayout(w) for w in self.ws]
        self.wb = [jax.random.normal(k, (K, N), jnp.bfloat16) for k in keys]


def bench_shape(ss: ShapeSet, M: int, bw: float, *, profile: bool = True,
                tune: bool | None = None) -> dict:
    """One row: the api's default path for the ShapeSet's layout (canonical: Pallas-Triton /
    dequantize + cuBLAS; "nk": Mosaic GPU, or XLA's dequantize + cuBLAS above its M range)."""
    K, N, g = ss.K, ss.N, ss.g
    x = jax.random.normal(jax.random.key(M), (M, K), jnp.bfloat16)
    rows = np.unique(np.linspace(0, M - 1, min(M, 16)).astype(int))
    ref = np.asarray(x.astype(jnp.float32), np.float64)[rows] @ ss.W64
    if tune and ss.ws[0].layout == LAYOUT_NK:  # autotune (eagerly, outside jit), cached
        from jaxquant.kernels.w4a16.api import _on_hopper, _pick_mosaic_config, mosaic_supported

        if _on_hopper() and mosaic_supported(M, K, N, g) is None:
            _pick_mosaic_config(M, K, N, g, ss.ws[0], True)
    kern = lambda x, w: w4a16_matmul(x, w, group_size=g)
    bf = lambda x, w: jnp.dot(x, w)  # XLA's bf16 dot (cuBLAS, float32 accumulation)
    fmt = lambda x, w: w4a16_matmul_reference(x, w, group_size=g)
    R = ss.R if M < 1024 else min(ss.R, 16)  # compute-bound: dispatch is negligible
    ws, wb = ss.ws[:R], ss.wb[:R]
    # correctness first
    out = jax.jit(kern)(x, ws[0])
    err = H.rel_err(np.asarray(out.astype(jnp.float32))[rows], ref)
    us, spread, _ = H.time_fn(kern, x, ws)
    us_bf, _, _ = H.time_fn(bf, x, wb)
    us_fmt, _, o2 = H.time_fn(fmt, x, ws)
    nk = ss.ws[0].layout == LAYOUT_NK
    from jaxquant.kernels.w4a16.api import _pick_config, _pick_mosaic_config, mosaic_supported

    from jaxquant.kernels.w4a16.api import _on_hopper

    mosaic = nk and _on_hopper() and mosaic_supported(M, K, N, g) is None
    name = ("w4a16 mosaic" if mosaic else "w4a16 nk: XLA dequant + cuBLAS") if nk else "w4a16"
    row = dict(kernel=name, M=M, K=K, N=N, group=g, us=us, spread_us=spread, xla_bf16_us=us_bf,
               xla_format_us=us_fmt, floor_us=floor_us(M, K, N, g, bw), max_rel_err=err,
               xla_format_rel_err=H.rel_err(np.asarray(o2.astype(jnp.float32))[rows], ref), R=R)
    if profile:
        row["dev_us"], brk = H.device_time(kern, x, ws)
        row["dev_kernels"] = {k[:48]: round(v, 2) for k, v in brk.items()}
        row["xla_bf16_dev_us"], _ = H.device_time(bf, x, wb)
        row["xla_format_dev_us"], _ = H.device_time(fmt, x, ws)
        row["pct_floor_dev"] = 100 * row["floor_us"] / row["dev_us"]
        row["vs_bf16_dev"] = row["xla_bf16_dev_us"] / row["dev_us"]
    if mosaic:
        row["config"] = _pick_mosaic_config(M, K, N, g, ws[0], None).to_dict()
    elif not nk:
        row["config"] = _pick_config(M, K, N, g, ws[0], x, None, False).to_dict()
    row["vs_bf16"] = us_bf / us
    row["vs_xla_format"] = us_fmt / us
    row["pct_floor"] = 100 * row["floor_us"] / us
    return row
