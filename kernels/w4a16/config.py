"""Block-size configuration of the W4A16 Pallas-Triton kernel, and heuristic defaults."""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxquant.kernels._common import cdiv, is_pow2, next_pow2

DEQUANT_MODES = ("asm", "bits", "convert")
SCALE_MODES = ("epilogue", "weight")


@dataclasses.dataclass(frozen=True)
class W4A16Config:
    """One launch configuration.

    block_m/block_n: output tile (powers of two, >= 16).
    block_k: logical K rows per loop iteration (power of two, >= 32); each iteration is cut
      into sub-tiles of min(block_k, group_size) rows, one scale row each.
    split_k: number of K splits (grid axis 2); > 1 writes float32 partials that one XLA
      reduction sums (the decode regime, to keep every SM streaming weights).
    num_warps/num_stages: Triton launch/pipelining parameters.
    prefetch: load the next iteration's tiles into registers before computing the current
      one (a register double buffer; more bytes in flight per SM).
    dequant: "asm" (PTX bit tricks: prmt + lop3 into bf16 with the 0x4300 magic, exact
      subtraction of 128 + zero point; GPU only), "bits" (the same trick in jnp ops), or
      "convert" (plain integer -> float conversion).
    scale_mode: "epilogue" (one dot per group sub-tile on exact small integers; the f32
      partial result is scaled, exact products) or "weight" (scale the bf16 weight tile,
      then one accumulating dot).
    swap_ab: compute the transposed product (weights as the MMA's A operand).
    mode: "fused" (the kernel above) or "dequant_dot" (prefill: a Pallas kernel writes the
      bf16 weight once at full bandwidth, then XLA's bf16 dot (cuBLAS) runs on it).
    presplit_x: split x into its even/odd K columns with one small XLA op before the kernel
      (instead of inside it, per tile).
    reduce: how split-K partials are combined: "xla" (float32 partials [S, M, N], one XLA
      reduction) or "atomic" (float32 atomic adds into a zeroed [M, N] buffer, then a cast).
    """

    block_m: int = 16
    block_n: int = 128
    block_k: int = 256
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 1
    prefetch: bool = True
    dequant: str = "asm"
    scale_mode: str = "epilogue"
    swap_ab: bool = False
    mode: str = "fused"
    reduce: str = "xla"
    presplit_x: bool = False

    def __post_init__(self):
        for name in ("block_m", "block_n", "block_k"):
            v = getattr(self, name)
            if not isinstance(v, int) or not is_pow2(v):
                raise ValueError(f"W4A16Config.{name} must be a power of two, got {v!r}")
        if self.block_m < 16 or self.block_n < 16:
            raise ValueError(
                f"W4A16Config block_m/block_n must be >= 16 (tensor-core tiles), got "
                f"{self.block_m}/{self.block_n}"
            )
        if self.block_k < 32:
            raise ValueError(f"W4A16Config.block_k must be >= 32, got {self.block_k}")
        if not isinstance(self.split_k, int) or self.split_k < 1:
            raise ValueError(f"W4A16Config.split_k must be an int >= 1, got {self.split_k!r}")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"W4A16Config.num_warps must be 1/2/4/8/16, got {self.num_warps!r}")
        if not isinstance(self.num_stages, int) or not 1 <= self.num_stages <= 8:
            raise ValueError(f"W4A16Config.num_stages must be in 1..8, got {self.num_stages!r}")
        if self.dequant not in DEQUANT_MODES:
            raise ValueError(f"W4A16Config.dequant must be one of {DEQUANT_MODES}, got {self.dequant!r}")
        if self.reduce not in ("xla", "atomic"):
            raise ValueError(f"W4A16Config.reduce must be 'xla' or 'atomic', got {self.reduce!r}")
        if self.mode not in ("fused", "dequant_dot"):
            raise ValueError(f"W4A16Config.mode must be 'fused' or 'dequant_dot', got {self.mode!r}")
        if self.scale_mode not in SCALE_MODES:
            raise ValueError(
                f"W4A16Config.scale_mode must be one of {SCALE_MODES}, got {self.scale_mode!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "W4A16Config":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def replace(self, **kw) -> "W4A16Config":
        return dataclasses.replace(self, **kw)


def supports(group_size: int) -> bool:
    """Group sizes the Pallas kernel handles: multiples of 32 (sub-tiles of >= 32 rows)."""
    return group_size % 32 == 0


def sub_tile(block_k: int, group_size: int) -> int:
    """Logical K rows per sub-tile: the largest power of two dividing both, capped at block_k."""
    g_pow2 = group_size & -group_size
    return min(block_k, g_pow2)


def fit_split_k(M: int, K: int, N: int, cfg: W4A16Config) -> int:
    """split_k clipped so that no split is empty."""
    n_iter = cdiv(K, cfg.block_k)
    s = max(1, min(cfg.split_k, n_iter))
    ipp = cdiv(n_iter, s)
    return cdiv(n_iter, ipp)


def _split_for(n_blocks: int, n_iter: int, per_sm: int, sms: int) -> int:
    return max(1, min(n_iter // 2 if n_iter >= 4 else 1, round(per_sm * sms / max(1, n_blocks))))


def default_config(M: int, K: int, N: int, group_size: int, *, sms: int = 132, on_gpu: bool = True) -> W4A16Config:
    """Heuristic config when no tuned entry exists (from H100 sweeps, 2026-11-24):
    decode: small 2-warp programs (low registers -> many resident programs, the kernel is
    latency-bound) and split-K for ~8 programs per SM; M <= 128: tensor-core tiles with a
    register double buffer; larger M: dequantize once + XLA's bf16 dot (cuBLAS)."""
    dequant = "asm" if on_gpu else "bits"
    if M <= 16:
        bn = 128 if N >= 128 else max(16, next_pow2(N))
        bk = 128
        s = _split_for(cdiv(N, bn), cdiv(K, bk), 8, sms)
        cfg = W4A16Config(16, bn, bk, s, 2, 1, False, dequant, "epilogue")
    elif M <= 64:
        bm = next_pow2(M)
        bn, bk = 128, 128
        s = _split_for(cdiv(N, bn) * cdiv(M, bm), cdiv(K, bk), 4, sms)
        cfg = W4A16Config(bm, bn, bk, s, 4, 1, True, dequant, "epilogue")
    elif M <= 128 or not on_gpu:
        bm = min(128, next_pow2(M))
        bn, bk = 128, 128
        tiles = cdiv(M, bm) * cdiv(N, bn)
        s = 1 if tiles >= sms else _split_for(tiles, cdiv(K, bk), 2, sms)
        cfg = W4A16Config(bm, bn, bk, s, 8, 1, True, dequant, "weight")
    else:
        cfg = W4A16Config(mode="dequant_dot", dequant=dequant)
    return cfg.replace(split_k=fit_split_k(M, K, N, cfg))


def candidates(M: int, K: int, N: int, group_size: int, *, sms: int = 132) -> list[W4A16Config]:
    """The autotuner's sweep around the heuristic default."""
    base = default_config(M, K, N, group_size, sms=sms)
    out = [base]
    if M <= 16:
        s = base.split_k
        n_iter = cdiv(K, base.block_k)
        out += [
            base.replace(presplit_x=True),
            base.replace(prefetch=True),
            base.replace(block_k=256, split_k=max(1, s // 2)),
            base.replace(num_warps=4, presplit_x=True),
            base.replace(block_n=256, num_warps=4, split_k=min(2 * s, n_iter // 2 or 1)),
            base.replace(block_n=64, swap_ab=True, num_warps=4, split_k=max(1, s // 2)),
            base.replace(block_n=64, block_k=64, split_k=max(1, s // 2)),
            base.replace(split_k=min(2 * s, max(1, n_iter // 2))),
            base.replace(split_k=max(1, s // 2)),
            base.replace(dequant="bits"),
        ]
    elif M <= 128 and base.mode == "fused":
        out += [
            base.replace(split_k=base.split_k * 2),
            base.replace(split_k=max(1, base.split_k // 2)),
            base.replace(block_n=64, num_warps=4),
            base.replace(block_k=256),
            base.replace(prefetch=False, num_stages=3),
            W4A16Config(mode="dequant_dot", dequant=base.dequant),
        ]
    seen, uniq = set(), []
    for c in out:
        c = c.replace(split_k=fit_split_k(M, K, N, c))
        if c not in seen:
            seen.add(c)
            uniq.append(c)
    return uniq


def shape_key(M: int, K: int, N: int, group_size: int, asym: bool) -> str:
    mb = min(next_pow2(M), 8192)
    return f"M{mb}_K{K}_N{N}_g{group_size}_{'asym' if asym else 'sym'}"
