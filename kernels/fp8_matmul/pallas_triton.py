"""FP8 W8A8 matmul as Pallas-Triton kernels (NVIDIA Hopper/Ada; interpret mode on CPU).

  quantize kernel: one pass per block of rows: row amax (f32), sx = amax / 448, x / sx cast
    to float8_e4m3fn; writes xq and sx.
  matmul kernel: grid of output tiles in grouped order (group_m rows of tiles share the
    weight tiles in L2); K loop with software pipelining (num_stages); FP8 x FP8 tensor-core
    dots accumulate in float32; epilogue multiplies by sx[rows] x sw[cols] and casts to bf16.
    Weight layout "nk" ([N, K], K-contiguous) is what FP8 wgmma reads natively; "kn" works too.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from jaxquant.kernels._common import cdiv, next_pow2
from jaxquant.kernels.fp8_matmul.config import Fp8Config
from jaxquant.kernels.fp8_matmul.layouts import E4M3_MAX, LAYOUT_NK, Fp8Weights


def _quant_kernel(x_ref, q_ref, s_ref, *, M, K, BR, BK):
    r0 = pl.program_id(0) * BR
    rows = r0 + lax.broadcasted_iota(jnp.int32, (BR, 1), 0)
    rmask = rows < M
    nk = cdiv(K, BK)

    def load(i):
        cols = i * BK + lax.broadcasted_iota(jnp.int32, (1, BK), 1)
        m = rmask & (cols < K)
        return plgpu.load(x_ref.at[pl.ds(r0, BR), pl.ds(i * BK, BK)], mask=m, other=0), m

    def amax_body(i, acc):
        x, _ = load(i)
        return jnp.maximum(acc, jnp.max(jnp.abs(x.astype(jnp.float32)), axis=1, keepdims=True))

    amax = lax.fori_loop(0, nk, amax_body, jnp.zeros((BR, 1), jnp.float32))
    sx = amax / E4M3_MAX
    sx = jnp.where(sx > 0, sx, 1.0)
    inv = 1.0 / sx

    def q_body(i, c):
        x, m = load(i)
        xq = jnp.clip(x.astype(jnp.float32) * inv, -E4M3_MAX, E4M3_MAX).astype(jnp.float8_e4m3fn)
        plgpu.store(q_ref.at[pl.ds(r0, BR), pl.ds(i * BK, BK)], xq, mask=m)
        return c

    lax.fori_loop(0, nk, q_body, 0)
    plgpu.store(s_ref.at[pl.ds(r0, BR), pl.ds(0, 1)], sx, mask=rmask)


def quantize_per_token_pallas(x: jax.Array, *, interpret: bool = False) -> tuple[jax.Array, jax.Array]:
    """x [M, K] -> (xq float8_e4m3fn [M, K], sx float32 [M]) in one Pallas kernel."""
    M, K = x.shape
    BK = min(2048, next_pow2(K))
    BR = 4 if BK >= 2048 else max(1, min(16, 8192 // BK))
    kernel = functools.partial(_quant_kernel, M=M, K=K, BR=BR, BK=BK)
    xq, sx = pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((M, K), jnp.float8_e4m3fn),
                   jax.ShapeDtypeStruct((M, 1), jnp.float32)),
        grid=(cdiv(M, BR),),
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=1),
        interpret=interpret,
        name="fp8_quantize_per_token",
    )(x)
    return xq, sx.reshape(M)


def _f8_zero():
    return jnp.zeros((), jnp.float8_e4m3fn)


def _mm_kernel(xq_ref, sx_ref, w_ref, sw_ref, o_ref, *, M, K, N, cfg: Fp8Config, nk_layout: bool):
    BM, BN, BK, GM = cfg.block_m, cfg.block_n, cfg.block_k, cfg.group_m
    pid = pl.program_id(0)
    n_pm = cdiv(M, BM)
    n_pn = cdiv(N, BN)
    width = GM * n_pn
    group = pid // width
    first_m = group * GM
    gsize = jnp.minimum(n_pm - first_m, GM)
    pid_m = first_m + (pid % width) % gsize
    pid_n = (pid % width) // gsize
    m0 = pid_m * BM
    n0 = pid_n * BN
    rows = m0 + lax.broadcasted_iota(jnp.int32, (BM, 1), 0)
    cols = n0 + lax.broadcasted_iota(jnp.int32, (1, BN), 1)
    need_m, need_n, need_k = M % BM != 0, N % BN != 0, K % BK != 0
    nk = cdiv(K, BK)

    def body(i, acc):
        k0 = i * BK
        kk = k0 + lax.broadcasted_iota(jnp.int32, (1, BK), 1)
        xm = None
        if need_m:
            xm = rows < M
        if need_k:
            xm = (kk < K) if xm is None else xm & (kk < K)
        x_idx = (pl.ds(m0, BM), pl.ds(pl.multiple_of(k0, BK), BK))
        if xm is None:
            x = plgpu.load(xq_ref.at[x_idx])
        else:
            x = plgpu.load(xq_ref.at[x_idx], mask=jnp.broadcast_to(xm, (BM, BK)), other=_f8_zero())
        if nk_layout:
            wm = None
            if need_n:
                wm = cols.T < N
            if need_k:
                wm = (kk < K) if wm is None else wm & (kk < K)
            w_idx = (pl.ds(n0, BN), pl.ds(pl.multiple_of(k0, BK), BK))
            if wm is None:
                w = plgpu.load(w_ref.at[w_idx])
            else:
                w = plgpu.load(w_ref.at[w_idx], mask=jnp.broadcast_to(wm, (BN, BK)), other=_f8_zero())
            part = lax.dot_general(x, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
        else:
            wm = None
            if need_n:
                wm = cols < N
            if need_k:
                wm = (kk.T < K) if wm is None else wm & (kk.T < K)
            w_idx = (pl.ds(pl.multiple_of(k0, BK), BK), pl.ds(n0, BN))
            if wm is None:
                w = plgpu.load(w_ref.at[w_idx])
            else:
                w = plgpu.load(w_ref.at[w_idx], mask=jnp.broadcast_to(wm, (BK, BN)), other=_f8_zero())
            part = jnp.dot(x, w, preferred_element_type=jnp.float32)
        return acc + part

    acc = lax.fori_loop(0, nk, body, jnp.zeros((BM, BN), jnp.float32))
    rm = rows < M
    cm = cols < N
    sx = plgpu.load(sx_ref.at[pl.ds(m0, BM), pl.ds(0, 1)], mask=rm, other=0)
    sw = plgpu.load(sw_ref.at[pl.ds(0, 1), pl.ds(n0, BN)], mask=cm, other=0)
    out = (acc * sx * sw).astype(o_ref.dtype)
    o_idx = (pl.ds(m0, BM), pl.ds(n0, BN))
    if need_m or need_n:
        plgpu.store(o_ref.at[o_idx], out, mask=rm & cm)
    else:
        plgpu.store(o_ref.at[o_idx], out)


def fp8_matmul_triton(xq: jax.Array, sx: jax.Array, w: Fp8Weights, *, config: Fp8Config,
                      out_dtype=jnp.bfloat16, interpret: bool = False) -> jax.Array:
    """Pre-quantized activations (xq [M, K] e4m3, sx [M] f32) x Fp8Weights -> [M, N]."""
    M, K = xq.shape
    N = w.n
    cfg = config
    grid = (cdiv(M, cfg.block_m) * cdiv(N, cfg.block_n),)
    kernel = functools.partial(_mm_kernel, M=M, K=K, N=N, cfg=cfg, nk_layout=w.layout == LAYOUT_NK)
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((M, N), out_dtype),
        grid=grid,
        compiler_params=plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
        interpret=interpret,
        name=f"fp8_mm_m{cfg.block_m}n{cfg.block_n}k{cfg.block_k}",
    )(xq, sx.reshape(M, 1).astype(jnp.float32), w.qvalue,
      w.scale.reshape(1, N).astype(jnp.float32))
