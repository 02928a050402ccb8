"""Block-size configuration of the FP8 W8A8 Pallas-Triton kernel, and heuristic defaults."""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxquant.kernels._common import is_pow2, next_pow2


@dataclasses.dataclass(frozen=True)
class Fp8Config:
    """block_m/block_n/block_k: tile (powers of two; block_m, block_n >= 16, block_k >= 32).
    group_m: programs along M that share weight tiles in L2 (grouped launch order).
    num_warps/num_stages: Triton launch/pipelining parameters.
    quant: "xla" (per-token activation quantization as a separate XLA fusion) or "pallas"
      (a one-pass Pallas kernel: row amax, scale, cast)."""

    block_m: int = 128
    block_n: int = 256
    block_k: int = 128
    group_m: int = 8
    num_warps: int = 8
    num_stages: int = 3
    quant: str = "xla"

    def __post_init__(self):
        for name in ("block_m", "block_n", "block_k"):
            v = getattr(self, name)
            if not isinstance(v, int) or not is_pow2(v):
                raise ValueError(f"Fp8Config.{name} must be a power of two, got {v!r}")
        if self.block_m < 16 or self.block_n < 16 or self.block_k < 32:
            raise ValueError(
                f"Fp8Config: block_m, block_n >= 16 and block_k >= 32 required, got "
                f"{self.block_m}/{self.block_n}/{self.block_k}"
            )
        if not isinstance(self.group_m, int) or self.group_m < 1:
            raise ValueError(f"Fp8Config.group_m must be an int >= 1, got {self.group_m!r}")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"Fp8Config.num_warps must be 1/2/4/8/16, got {self.num_warps!r}")
        if not isinstance(self.num_stages, int) or not 1 <= self.num_stages <= 8:
            raise ValueError(f"Fp8Config.num_stages must be in 1..8, got {self.num_stages!r}")
        if self.quant not in ("xla", "pallas"):
            raise ValueError(f"Fp8Config.quant must be 'xla' or 'pallas', got {self.quant!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Fp8Config":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def replace(self, **kw) -> "Fp8Config":
        return dataclasses.replace(self, **kw)


def default_config(M: int, K: int, N: int, *, sms: int = 132) -> Fp8Config:
    if M <= 64:
        bm = max(16, next_pow2(M))
        return Fp8Config(bm, 64, 256, 1, 4, 4)
    if M <= 256:
        return Fp8Config(64 if M <= 64 else 128, 128, 128, 8, 4, 4)
    return Fp8Config(128, 256, 128, 8, 8, 3)


def candidates(M: int, K: int, N: int, *, sms: int = 132) -> list[Fp8Config]:
    base = default_config(M, K, N, sms=sms)
    out = [base]
    if M > 256:
        out += [
            base.replace(num_stages=4),
            Fp8Config(128, 128, 128, 8, 4, 4),
            Fp8Config(128, 256, 64, 8, 8, 4),
            Fp8Config(256, 128, 128, 8, 8, 3),
        ]
    seen, uniq = set(), []
    for c in out:
        if c not in seen:
            seen.add(c)
            uniq.append(c)
    return uniq


def shape_key(M: int, K: int, N: int, layout: str) -> str:
    return f"M{min(next_pow2(M), 8192)}_K{K}_N{N}_{layout}"
