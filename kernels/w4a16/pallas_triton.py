"""W4A16 matmul as a Pallas-Triton kernel (NVIDIA GPUs; interpret mode on CPU for tests).

Schedule (one kernel for both regimes, the config picks the shape of the work):
  grid = (N / block_n, M / block_m, split_k). Program (n, m, s) owns an output tile
  [block_m, block_n] and the K range of split s; it loops over that range in steps of
  block_k. Each step is cut into sub-tiles of T = min(block_k, group) logical rows, which
  lie in one group, so each has exactly one scale row (and one zero-point row).

  Per sub-tile: the packed weights [T/2, block_n] (uint8, N-contiguous: 16-byte loads) are
  split into low/high nibbles, i.e. the even and odd K rows; the activation tile
  [block_m, T] is split into its even and odd columns instead of re-interleaving the
  weights. Dequantization turns a nibble u into bf16 by bits: as_bf16(0x4300 | u) = 128 + u
  exactly, minus (128 + zero_point) (symmetric codes are first mapped to offset binary with
  a xor 0x8, zero point 8). All of this is exact in bf16.
  scale_mode="epilogue": two tensor-core dots (even, odd) on the exact integers, and the
  f32 result is scaled by the group's scale row (decode: M is tiny, the epilogue is cheap).
  scale_mode="weight": the integer tile is scaled in bf16 and accumulated by one dot
  (prefill: the weight tile is reused by many rows).

  Decode (M <= 16): block_m = 16 with the rows >= M masked (no padding of x in HBM, no
  activation re-reads of padded rows). The kernel is latency-bound (ncu: occupancy and
  DRAM throughput well under peak with 4-warp, 150-register programs), so the tuned
  configs use small 2-4-warp programs (~80-100 registers, 5-6 resident per SM) and split-K
  for ~8 programs per SM; the float32 partials of the splits are summed by one XLA
  reduction (1.3-2.4 us). A register double buffer (prefetch) is available but costs
  occupancy; it pays for the M = 128 tiles.
  Prefill (M > 128): mode="dequant_dot" dequantizes once with `dequantize_triton`
  (2.7 TB/s) and lets XLA's bf16 GEMM (cuBLAS) do the product: the fused Triton tile
  loop reached only ~40% of cuBLAS at M >= 1024.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from jaxquant.kernels._common import cdiv
from jaxquant.kernels.w4a16.config import W4A16Config, fit_split_k, sub_tile
from jaxquant.kernels.w4a16.layouts import Int4Weights

# --- dequantization of a packed tile ------------------------------------------------------

# One instance handles 4 packed bytes (8 codes). prmt spreads bytes (b0, b1) / (b2, b3)
# into the two 16-bit halves, lop3 computes (t & 0x000F000F) | 0x43004300 = two bf16
# values 128 + u, and an exact bf16x2 fma subtracts 128 + zero_point.
_ASM_HEAD = """{
.reg .b32 jq_w, jq_t0, jq_t1, jq_z, jq_c, jq_d;
mov.b32 jq_z, 0;
"""
_ASM_SYM_PREP = "xor.b32 jq_w, $2, 0x88888888;\n"
_ASM_ASYM_PREP = "mov.b32 jq_w, $2;\n"


def _asm_body(shift: bool, sym: bool) -> str:
    s = "prmt.b32 jq_t0, jq_w, jq_z, 0x4140;\nprmt.b32 jq_t1, jq_w, jq_z, 0x4342;\n"
    if shift:
        s += "shr.u32 jq_t0, jq_t0, 4;\nshr.u32 jq_t1, jq_t1, 4;\n"
    s += (
        "lop3.b32 $0, jq_t0, 0x000F000F, 0x43004300, 0xEA;\n"
        "lop3.b32 $1, jq_t1, 0x000F000F, 0x43004300, 0xEA;\n"
    )
    if sym:
        # x * 1 + (-136): exact for the integers 128..143
        s += (
            "mov.b32 jq_c, 0x3F803F80;\n"
            "mov.b32 jq_d, 0xC308C308;\n"
            "fma.rn.bf16x2 $0, $0, jq_c, jq_d;\n"
            "fma.rn.bf16x2 $1, $1, jq_c, jq_d;\n"
        )
    else:
        # (128 + zp) * -1 + x
        s += (
            "mov.b32 jq_c, 0xBF80BF80;\n"
            "fma.rn.bf16x2 $0, $3, jq_c, $0;\n"
            "fma.rn.bf16x2 $1, $4, jq_c, $1;\n"
        )
    return s + "}"


def _dequant_asm(q, zoff, sym: bool):
    """uint8 [P, BN] -> (lo, hi) bf16 [P, BN] via inline PTX (GPU only)."""
    out = [jax.ShapeDtypeStruct(q.shape, jnp.bfloat16)]
    res = []
    for shift in (False, True):
        if sym:
            asm = _ASM_HEAD + _ASM_SYM_PREP + _asm_body(shift, True)
            (v,) = plgpu.elementwise_inline_asm(
                asm, args=[q], constraints="=r,=r,r", pack=4, result_shape_dtypes=out
            )
        else:
            asm = _ASM_HEAD + _ASM_ASYM_PREP + _asm_body(shift, False)
            zb = jnp.broadcast_to(zoff, q.shape)
            (v,) = plgpu.elementwise_inline_asm(
                asm, args=[q, zb], constraints="=r,=r,r,r,r", pack=4, result_shape_dtypes=out
            )
        res.append(v)
    return res[0], res[1]


def _dequant_bits(q, zoff, sym: bool):
    """The same bit trick in jnp ops (works in interpret mode)."""
    if sym:
        q = q ^ jnp.uint8(0x88)
    lo = (q & jnp.uint8(0xF)).astype(jnp.uint16) | jnp.uint16(0x4300)
    hi = (q >> jnp.uint8(4)).astype(jnp.uint16) | jnp.uint16(0x4300)
    lo = lax.bitcast_convert_type(lo, jnp.bfloat16) - zoff
    hi = lax.bitcast_convert_type(hi, jnp.bfloat16) - zoff
    return lo, hi


def _dequant_convert(q, z, sym: bool):
    """Plain conversions (baseline)."""
    lo = (q & jnp.uint8(0xF)).astype(jnp.int32)
    hi = (q >> jnp.uint8(4)).astype(jnp.int32)
    if sym:
        lo = jnp.where(lo >= 8, lo - 16, lo)
        hi = jnp.where(hi >= 8, hi - 16, hi)
    else:
        lo = lo - z
        hi = hi - z
    return lo.astype(jnp.float32).astype(jnp.bfloat16), hi.astype(jnp.float32).astype(jnp.bfloat16)


# --- the kernel ---------------------------------------------------------------------------


def _kernel(x_ref, q_ref, s_ref, *rest, M, K, N, G, group, cfg: W4A16Config, asym: bool,
            dequant: str, n_iter: int, ipp: int, split: int, atomic: bool):
    if atomic:
        rest = rest[:-2] + rest[-1:]  # the zeroed input aliases the output
    if asym:
        z_ref, o_ref = rest
    else:
        (o_ref,) = rest
        z_ref = None
    BM, BN, BK = cfg.block_m, cfg.block_n, cfg.block_k
    T = sub_tile(BK, group)
    P = T // 2
    n_sub = BK // T
    Kp = cdiv(K, 2)
    sym = not asym

    pid_n = pl.program_id(0)
    pid_m = pl.program_id(1)
    pid_s = pl.program_id(2)
    m0 = pid_m * BM
    n0 = pid_n * BN
    it_lo = pid_s * ipp
    it_hi = jnp.minimum(it_lo + ipp, n_iter)

    need_m = M % BM != 0
    need_n = N % BN != 0
    need_k = K % BK != 0
    rows_m = m0 + lax.broadcasted_iota(jnp.int32, (BM, 1), 0)
    cols_n = n0 + lax.broadcasted_iota(jnp.int32, (1, BN), 1)
    m_mask = rows_m < M
    n_mask = cols_n < N

    def _and(a, b):
        if a is None:
            return b
        if b is None:
            return a
        return a & b

    def load_tiles(it, valid):
        """Loads of one K step (a tuple per sub-tile). `valid` (scalar bool or None) masks
        the whole step (prefetch past the end of the split)."""
        tiles = []
        for j in range(n_sub):
            k0 = it * BK + j * T
            r0 = k0 // 2
            # packed weights [P, BN]
            qm = n_mask if need_n else None
            if need_k:
                qm = _and(qm, (r0 + lax.broadcasted_iota(jnp.int32, (P, 1), 0)) < Kp)
            if valid is not None:
                qm = _and(qm, jnp.broadcast_to(valid, (1, 1)))
            q_idx = (pl.ds(pl.multiple_of(r0, P), P), pl.ds(n0, BN))
            if qm is None:
                q = plgpu.load(q_ref.at[q_idx])
            else:
                q = plgpu.load(q_ref.at[q_idx], mask=jnp.broadcast_to(qm, (P, BN)), other=0)
            # activations [BM, T]
            xm = m_mask if need_m else None
            if need_k:
                xm = _and(xm, (k0 + lax.broadcasted_iota(jnp.int32, (1, T), 1)) < K)
            if valid is not None:
                xm = _and(xm, jnp.broadcast_to(valid, (1, 1)))
            if cfg.presplit_x:
                # x_ref is [2M, ceil(K/2)]: even columns in rows [0, M), odd ones in [M, 2M)
                xm = m_mask if need_m else None
                if need_k:
                    xm = _and(xm, (r0 + lax.broadcasted_iota(jnp.int32, (1, P), 1)) < Kp)
                if valid is not None:
                    xm = _and(xm, jnp.broadcast_to(valid, (1, 1)))
                xs = []
                for half in (0, 1):
                    idx = (pl.ds(half * M + m0, BM), pl.ds(pl.multiple_of(r0, P), P))
                    if xm is None:
                        xs.append(plgpu.load(x_ref.at[idx]))
                    else:
                        xs.append(plgpu.load(x_ref.at[idx], mask=jnp.broadcast_to(xm, (BM, P)), other=0))
                x = tuple(xs)
            else:
                x_idx = (pl.ds(m0, BM), pl.ds(pl.multiple_of(k0, T), T))
                if xm is None:
                    x = plgpu.load(x_ref.at[x_idx])
                else:
                    x = plgpu.load(x_ref.at[x_idx], mask=jnp.broadcast_to(xm, (BM, T)), other=0)
            # scale / zero-point row [1, BN]
            gi = k0 // group
            sm = n_mask if need_n else None
            if need_k:
                sm = _and(sm, jnp.broadcast_to(gi < G, (1, 1)))
            if valid is not None:
                sm = _and(sm, jnp.broadcast_to(valid, (1, 1)))
            s_idx = (pl.ds(gi, 1), pl.ds(n0, BN))
            if sm is None:
                s = plgpu.load(s_ref.at[s_idx])
                z = plgpu.load(z_ref.at[s_idx]) if asym else None
            else:
                smb = jnp.broadcast_to(sm, (1, BN))
                s = plgpu.load(s_ref.at[s_idx], mask=smb, other=0)
                z = plgpu.load(z_ref.at[s_idx], mask=smb, other=0) if asym else None
            tiles.append((q, x, s, z))
        return tuple(tiles)

    def compute(acc, tiles):
        for q, x, s, z in tiles:
            if cfg.presplit_x:
                xe, xo = x
            else:
                xe, xo = jnp.unstack(x.reshape(BM, P, 2), axis=-1)  # even / odd K columns
            if dequant == "convert":
                lo, hi = _dequant_convert(q, None if sym else z.astype(jnp.int32), sym)
            else:
                if sym:
                    zoff = jnp.bfloat16(136.0)
                else:
                    zoff = (z.astype(jnp.float32) + 128.0).astype(jnp.bfloat16)
                if dequant == "asm":
                    lo, hi = _dequant_asm(q, zoff, sym)
                else:
                    lo, hi = _dequant_bits(q, zoff, sym)
            sf = s.astype(jnp.float32)
            if cfg.scale_mode == "weight":
                sb = s.astype(jnp.bfloat16)
                lo = lo * sb
                hi = hi * sb
            if cfg.swap_ab:
                part = jnp.dot(lo.T, xe.T, preferred_element_type=jnp.float32)
                part = part + jnp.dot(hi.T, xo.T, preferred_element_type=jnp.float32)
                if cfg.scale_mode == "epilogue":
                    part = part * sf.T
            else:
                part = jnp.dot(xe, lo, preferred_element_type=jnp.float32)
                part = part + jnp.dot(xo, hi, preferred_element_type=jnp.float32)
                if cfg.scale_mode == "epilogue":
                    part = part * sf
            acc = acc + part
        return acc

    acc_shape = (BN, BM) if cfg.swap_ab else (BM, BN)
    acc0 = jnp.zeros(acc_shape, jnp.float32)
    if cfg.prefetch:
        first = load_tiles(it_lo, None)

        def body(it, carry):
            acc, cur = carry
            nxt = load_tiles(it + 1, it + 1 < it_hi)
            return compute(acc, cur), nxt

        acc, _ = lax.fori_loop(it_lo, it_hi, body, (acc0, first))
    else:

        def body(it, acc):
            return compute(acc, load_tiles(it, None))

        acc = lax.fori_loop(it_lo, it_hi, body, acc0)
    if cfg.swap_ab:
        acc = acc.T

    om = None
    if need_m:
        om = m_mask
    if need_n:
        om = _and(om, n_mask)
    if atomic:
        o_idx = (pl.ds(m0, BM), pl.ds(n0, BN))
        if om is None:
            plgpu.atomic_add(o_ref, o_idx, acc)
        else:
            plgpu.atomic_add(o_ref, o_idx, acc, mask=jnp.broadcast_to(om, (BM, BN)))
        return
    if split == 1:
        val = acc.astype(o_ref.dtype)
        o_idx = (pl.ds(m0, BM), pl.ds(n0, BN))
    else:
        val = acc
        o_idx = (pl.ds(pid_s * M + m0, BM), pl.ds(n0, BN))
    if om is None:
        plgpu.store(o_ref.at[o_idx], val)
    else:
        plgpu.store(o_ref.at[o_idx], val, mask=jnp.broadcast_to(om, (BM, BN)))


def _dequant_kernel(q_ref, s_ref, *rest, Kp, N, G, group, BR, BN, asym, dequant):
    if asym:
        z_ref, o_ref = rest
    else:
        (o_ref,) = rest
    r0 = pl.program_id(0) * BR
    n0 = pl.program_id(1) * BN
    rows = r0 + lax.broadcasted_iota(jnp.int32, (BR, 1), 0)
    cols = n0 + lax.broadcasted_iota(jnp.int32, (1, BN), 1)
    mask = (rows < Kp) & (cols < N)
    q = plgpu.load(q_ref.at[pl.ds(r0, BR), pl.ds(n0, BN)], mask=mask, other=0)
    gi = (2 * r0) // group
    smask = cols < N
    s = plgpu.load(s_ref.at[pl.ds(gi, 1), pl.ds(n0, BN)], mask=smask, other=0).astype(jnp.float32)
    if asym:
        z = plgpu.load(z_ref.at[pl.ds(gi, 1), pl.ds(n0, BN)], mask=smask, other=0)
        zoff = (z.astype(jnp.float32) + 128.0).astype(jnp.bfloat16)
    else:
        zoff = jnp.bfloat16(136.0)
    if dequant == "asm":
        lo, hi = _dequant_asm(q, zoff, not asym)
    elif dequant == "bits":
        lo, hi = _dequant_bits(q, zoff, not asym)
    else:
        lo, hi = _dequant_convert(q, None if not asym else z.astype(jnp.int32), not asym)
    lo = (lo.astype(jnp.float32) * s).astype(o_ref.dtype)
    hi = (hi.astype(jnp.float32) * s).astype(o_ref.dtype)
    m3 = mask.reshape(BR, 1, BN)
    plgpu.store(o_ref.at[pl.ds(r0, BR), pl.ds(0, 1), pl.ds(n0, BN)], lo.reshape(BR, 1, BN), mask=m3)
    plgpu.store(o_ref.at[pl.ds(r0, BR), pl.ds(1, 1), pl.ds(n0, BN)], hi.reshape(BR, 1, BN), mask=m3)


def dequantize_triton(w: Int4Weights, k: int, *, group_size: int, dtype=jnp.bfloat16,
                      dequant: str = "asm", block_n: int = 256, interpret: bool = False) -> jax.Array:
    """Canonical Int4Weights -> W [K, N] in `dtype` (one pass at memory bandwidth)."""
    Kp, N = w.qvalue.shape
    G = w.scale.shape[0]
    if interpret and dequant == "asm":
        dequant = "bits"
    BR = min(group_size & -group_size, 128) // 2
    BN = min(block_n, max(16, 1 << (N - 1).bit_length()))
    asym = w.zero_point is not None
    kernel = functools.partial(_dequant_kernel, Kp=Kp, N=N, G=G, group=group_size, BR=BR, BN=BN,
                               asym=asym, dequant=dequant)
    args = [w.qvalue, w.scale] + ([w.zero_point] if asym else [])
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((Kp, 2, N), dtype),
        grid=(cdiv(Kp, BR), cdiv(N, BN)),
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=1),
        interpret=interpret,
        name="w4a16_dequantize",
    )(*args)
    out = out.reshape(2 * Kp, N)
    return out if 2 * Kp == k else out[:k]


def w4a16_matmul_triton(x: jax.Array, w: Int4Weights, *, group_size: int, config: W4A16Config,
                        interpret: bool = False) -> jax.Array:
    """x [M, K] bf16, canonical Int4Weights -> [M, N] bf16. Shapes are assumed validated."""
    M, K = x.shape
    N = w.qvalue.shape[1]
    G = w.scale.shape[0]
    cfg = config
    if cfg.mode == "dequant_dot":
        wd = dequantize_triton(w, K, group_size=group_size, dtype=x.dtype, dequant=cfg.dequant,
                               interpret=interpret)
        # bf16 x bf16 -> bf16 (cuBLAS accumulates in float32); lets XLA emit the output
        # type from the GEMM instead of a separate float32 -> bf16 pass
        return jnp.dot(x, wd)
    if not interpret and cfg.dequant == "asm":
        dequant = "asm"
    else:
        dequant = "bits" if cfg.dequant == "asm" else cfg.dequant
    split = fit_split_k(M, K, N, cfg)
    n_iter = cdiv(K, cfg.block_k)
    ipp = cdiv(n_iter, split)
    asym = w.zero_point is not None
    atomic = split > 1 and cfg.reduce == "atomic" and not interpret  # masked atomics: GPU only
    grid = (cdiv(N, cfg.block_n), cdiv(M, cfg.block_m), split)
    kernel = functools.partial(
        _kernel, M=M, K=K, N=N, G=G, group=group_size, cfg=cfg, asym=asym, dequant=dequant,
        n_iter=n_iter, ipp=ipp, split=split, atomic=atomic,
    )
    xin = x
    if cfg.presplit_x:
        Kp = w.qvalue.shape[0]
        xp = jnp.pad(x, ((0, 0), (0, 2 * Kp - K))) if 2 * Kp != K else x
        xin = xp.reshape(M, Kp, 2).transpose(2, 0, 1).reshape(2 * M, Kp)
    args = [xin, w.qvalue, w.scale] + ([w.zero_point] if asym else [])
    aliases = {}
    if atomic:
        out_shape = jax.ShapeDtypeStruct((M, N), jnp.float32)
        args.append(jnp.zeros((M, N), jnp.float32))
        aliases = {len(args) - 1: 0}
    elif split == 1:
        out_shape = jax.ShapeDtypeStruct((M, N), x.dtype)
    else:
        out_shape = jax.ShapeDtypeStruct((split * M, N), jnp.float32)
    out = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=grid,
        input_output_aliases=aliases,
        compiler_params=plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
        interpret=interpret,
        name=f"w4a16_m{cfg.block_m}n{cfg.block_n}k{cfg.block_k}s{split}",
    )(*args)
    if atomic:
        out = out.astype(x.dtype)
    elif split > 1:
        out = out.reshape(split, M, N).sum(axis=0).astype(x.dtype)
    return out
