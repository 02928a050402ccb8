"""W4A16 matmul as a Pallas Mosaic GPU kernel (Hopper: TMA pipelining + wgmma).

Schedule (the "swap-AB" form used by mixed-input GEMMs for small M):
  out^T [N, M] = W^T [N, K] @ x^T [K, M]. The dequantized weight tile is the wgmma's A
  operand, fed from registers (its M dimension is block_n, >= 64 per warpgroup), and the
  activation tile is B, read from shared memory through a transposed view (its N dimension
  is M padded to a multiple of 8). So decode (M = 1..16) wastes at most 7 rows of tensor-core
  work instead of padding M to 64, and the weight bytes dominate the traffic.

  grid = (N / block_n, M_tiles, split_k); one warpgroup per CTA. A TMA pipeline
  (plgpu.emit_pipeline, `stages` tiles in flight) streams, per K step of 128:
    weights   int4 [block_n, 128]  (layout "nk": rows are output channels, K-contiguous;
              XLA stores int4 packed two per byte, so a tile is block_n x 64 bytes)
    x         bf16 [block_m, 128]
    scales    bf16 [128 / group (or 1), block_n]   (and zero points, asymmetric)
  Registers: int4 -> bf16 by Mosaic's bit-trick conversion, minus the zero point (exact:
  integers in [-15, 15]), times the group scale (one bf16 rounding, as the bf16 weight of
  the XLA reference), then wgmma into a float32 accumulator [block_n, block_m].
  Split-K writes float32 partials [split, N, Mp] that one XLA reduction sums.

Layout "nk" (see layouts.to_nk): qvalue int4 [N, K] with two's-complement codes (asymmetric
codes are stored minus 8 and their zero points as bf16 (zp - 8), so both cases decode the
same way), scale bf16 [ceil(K/g), N].

This module needs jax >= 0.11 on an NVIDIA Hopper GPU (sm_90); `supported` says when.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from jaxquant.kernels._common import cdiv

BK = 128  # K granularity: shapes must be multiples of it (64-byte int4 rows, 64-byte swizzle)


@dataclasses.dataclass(frozen=True)
class MosaicConfig:
    """block_n: output channels per CTA (64 or 128: wgmma's M is 64 per instruction);
    block_m: activation rows per CTA (multiple of 8, <= 128: wgmma's N); split_k: K splits
    (grid axis 2, float32 partials); stages: TMA tiles in flight per CTA; block_k: K per
    pipeline step (128 or 256); scale_mode: "weight" (scale the bf16 weight tile, one
    accumulating wgmma per step) or "epilogue" (a wgmma per group on the exact integer
    weights into a fresh accumulator, scaled in float32: fewer per-element instructions)."""

    block_n: int = 128
    block_m: int = 8
    split_k: int = 1
    stages: int = 4
    block_k: int = 128
    scale_mode: str = "weight"

    def __post_init__(self):
        if self.block_n not in (64, 128, 256):
            raise ValueError(f"MosaicConfig.block_n must be 64, 128 or 256, got {self.block_n}")
        if self.block_m % 8 or not 8 <= self.block_m <= 128:
            raise ValueError(f"MosaicConfig.block_m must be a multiple of 8 in [8, 128], got {self.block_m}")
        if self.block_k not in (128, 256):
            raise ValueError(f"MosaicConfig.block_k must be 128 or 256, got {self.block_k}")
        if self.scale_mode not in ("weight", "epilogue"):
            raise ValueError(f"MosaicConfig.scale_mode must be 'weight' or 'epilogue', got {self.scale_mode!r}")
        if self.split_k < 1 or self.stages < 1:
            raise ValueError(f"MosaicConfig split_k/stages must be >= 1, got {self.split_k}/{self.stages}")


    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MosaicConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


MAX_M = 256  # above this the dequantize + cuBLAS path is faster (H200 sweep: M=1024 0.74x)


def supported(M: int, K: int, N: int, group_size: int, block_n: int = 64) -> str | None:
    """None if the Mosaic kernel handles this shape, else why not."""
    if K % BK:
        return f"K={K} is not a multiple of {BK}"
    if N % block_n:
        return f"N={N} is not a multiple of {block_n}"
    if not (group_size == 64 or group_size % BK == 0):
        return f"group_size={group_size} is not 64 or a multiple of {BK}"
    if M > MAX_M:
        return f"M={M} > {MAX_M} is prefill-sized (dequantize + cuBLAS is faster there)"
    return None


def fit_split(K: int, split: int, block_k: int = BK) -> int:
    """The largest divisor of K/block_k not above `split` (1 if block_k does not divide K)."""
    if K % block_k:
        return 1
    steps = K // block_k
    return max(d for d in range(1, max(1, min(split, steps)) + 1) if steps % d == 0)


def default_config(M: int, K: int, N: int, group_size: int, *, sms: int = 132) -> MosaicConfig:
    """Heuristic launch config (H200 sweeps, 2026-12-01, kernels/benchmarks/NOTES.md): decode
    (M <= 16) 64-channel tiles and split-K for ~4 CTAs per SM; larger M 128-channel tiles
    with up to 128 activation rows per CTA and ~2 CTAs per SM."""
    if M <= 16:
        bm, bn, per_sm = max(8, cdiv(M, 8) * 8), 64, 4
    else:
        bm, bn, per_sm = min(128, cdiv(M, 8) * 8), 128 if N % 128 == 0 else 64, 2
    ctas = (N // bn) * cdiv(M, bm)
    split = fit_split(K, max(1, round(per_sm * sms / ctas)))
    return MosaicConfig(block_n=bn, block_m=bm, split_k=split, stages=4)


def candidates(M: int, K: int, N: int, group_size: int, *, sms: int = 132) -> list[MosaicConfig]:
    """The autotuner's sweep around the heuristic default."""
    base = default_config(M, K, N, group_size, sms=sms)
    out = [base, dataclasses.replace(base, scale_mode="epilogue")]
    for bk in (256,):
        for mode in ("weight", "epilogue"):
            out.append(dataclasses.replace(base, block_k=bk, scale_mode=mode,
                                           split_k=max(1, base.split_k // 2)))
    out += [dataclasses.replace(base, split_k=2 * base.split_k),
            dataclasses.replace(base, stages=6 if M <= 16 else 2)]
    seen, uniq = set(), []
    for c in out:
        c = dataclasses.replace(c, split_k=fit_split(K, c.split_k, c.block_k))
        if c not in seen:
            seen.add(c)
            uniq.append(c)
    return uniq


def _transpose_ref(ref):
    t = getattr(ref, "transpose", None)
    if t is not None:
        try:
            return t((1, 0))
        except TypeError:
            pass
    from jax.experimental.pallas import mosaic_gpu as plgpu

    return plgpu.transpose_ref(ref, (1, 0))


def w4a16_matmul_mosaic(x: jax.Array, qvalue: jax.Array, scale: jax.Array, zero: jax.Array | None,
                        *, group_size: int, config: MosaicConfig, pad_x: bool = False) -> jax.Array:
    """x [M, K] bf16, qvalue int4 [N, K], scale bf16 [G, N], zero bf16 [G, N] or None ->
    [M, N] bf16. Shapes are assumed validated (`supported`)."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import mosaic_gpu as plgpu

    M, K = x.shape
    N = qvalue.shape[0]
    cfg = config
    bn, bm = cfg.block_n, cfg.block_m
    Mp = cdiv(M, bm) * bm
    # Rows past M: TMA zero-fills the out-of-bounds part of the last activation tile, but only
    # when M is below its 8-row tiling or a multiple of it (else Mosaic refuses the copy:
    # H200 run, M = 33 and 130), so such M are padded
    pad = Mp != M and (pad_x or (M > 8 and M % 8 != 0))
    xp = jnp.pad(x, ((0, Mp - M), (0, 0))) if pad else x
    bk = cfg.block_k if K % cfg.block_k == 0 else BK
    split = fit_split(K, cfg.split_k, bk)
    ksteps = K // bk // split
    gpb = bk // group_size if group_size < bk else 1  # scale rows per step
    steps_per_group = max(1, group_size // bk)
    asym = zero is not None

    x_tr = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))
    w_swz = bk // 2  # bytes per int4 row of the tile: 64 or 128
    w_tr = (plgpu.TilingTransform((8, bk)), plgpu.SwizzleTransform(w_swz))

    def kernel(*refs):
        if asym:
            x_gmem, w_gmem, s_gmem, z_gmem, o_gmem = refs
        else:
            x_gmem, w_gmem, s_gmem, o_gmem = refs
        n = lax.axis_index("n")
        m = lax.axis_index("m")
        sp = lax.axis_index("s")
        k0 = sp * ksteps

        def weight_tiles(w_smem, z):
            """The step's int4 tile as bf16 integers (minus the zero point), one per group."""
            # 32-bit SMEM loads (8 codes per lane), shuffled into the wgmma operand layout
            # while still 4-bit, then the bit-trick int4 -> bf16 conversion
            w = plgpu.layout_cast(w_smem[...], plgpu.Layout.WGMMA_UPCAST_4X)
            w = plgpu.layout_cast(w, plgpu.Layout.WGMMA).astype(jnp.bfloat16)
            for j in range(gpb):
                wj = w if gpb == 1 else w[:, j * group_size:(j + 1) * group_size]
                if asym:
                    wj = wj - z[0][j, :][:, None]
                yield j, wj

        def b_tile(x_smem, j):
            xt = _transpose_ref(x_smem)
            return xt if gpb == 1 else xt.at[j * group_size:(j + 1) * group_size]

        def step_weight(_, x_smem, w_smem, s_smem, *z, acc_ref):
            # the bf16 weight is scaled per group (one rounding, as the XLA reference's bf16 W)
            for j, wj in weight_tiles(w_smem, z):
                plgpu.wgmma(acc_ref, wj * s_smem[j, :][:, None], b_tile(x_smem, j))
            plgpu.wgmma_wait(0)

        def step_epilogue(_, x_smem, w_smem, s_smem, *zc):
            # exact integer products per group, scaled in float32 (the scales leave the
            # per-element work; M is small, so the accumulator is a few registers)
            *z, acc = zc
            for j, wj in weight_tiles(w_smem, z):
                zero = jnp.zeros((bn, bm), jnp.float32)
                part = pl.run_state(
                    lambda r, wj=wj, j=j: plgpu.wgmma(r, wj, b_tile(x_smem, j)))(
                        plgpu.ACC.init(zero))
                acc = acc + part * s_smem[j, :].astype(jnp.float32)[:, None]
            return acc

        srow = lambda k: ((k0 + k) // steps_per_group, n)
        in_specs = [
            plgpu.BlockSpec((bm, bk), lambda k: (m, k0 + k), transforms=x_tr),
            plgpu.BlockSpec((bn, bk), lambda k: (n, k0 + k), transforms=w_tr),
            plgpu.BlockSpec((gpb, bn), srow),
        ]
        args = [x_gmem, w_gmem, s_gmem]
        if asym:
            in_specs.append(plgpu.BlockSpec((gpb, bn), srow))
            args.append(z_gmem)
        stages = min(cfg.stages, ksteps)
        if cfg.scale_mode == "epilogue":
            init = plgpu.layout_cast(jnp.zeros((bn, bm), jnp.float32), plgpu.Layout.WGMMA)
            acc = plgpu.emit_pipeline(step_epilogue, grid=(ksteps,), in_specs=in_specs,
                                      max_concurrent_steps=stages, init_carry=init)(*args)
        else:
            def compute(acc_ref):
                body = lambda *a: step_weight(*a, acc_ref=acc_ref)
                plgpu.emit_pipeline(body, grid=(ksteps,), in_specs=in_specs,
                                    max_concurrent_steps=stages)(*args)
                return acc_ref[...]

            acc = pl.run_scoped(compute, plgpu.ACC((bn, bm), jnp.float32))
        dst = o_gmem.at[sp, pl.ds(n * bn, bn), pl.ds(m * bm, bm)]
        dst[...] = acc if split > 1 else acc.astype(o_gmem.dtype)

    out_dtype = jnp.float32 if split > 1 else x.dtype
    args = [xp, qvalue, scale] + ([zero] if asym else [])
    out = plgpu.kernel(
        kernel,
        out_type=jax.ShapeDtypeStruct((split, N, Mp), out_dtype),
        grid=(N // bn, Mp // bm, split),
        grid_names=("n", "m", "s"),
        compiler_params=plgpu.CompilerParams(
            lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
    )(*args)
    out = out[0] if split == 1 else out.sum(axis=0)
    return out[:, :M].T.astype(x.dtype)
