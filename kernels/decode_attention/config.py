"""Launch configuration of the decode-attention Pallas-Triton kernel, and its default."""

from __future__ import annotations

import dataclasses

from jaxquant.kernels._common import cdiv, is_pow2


@dataclasses.dataclass(frozen=True)
class DecodeAttentionConfig:
    """block_s: cache positions per loop iteration (power of two >= 16);
    num_splits: programs per (sequence, KV head) along the cache (flash-decoding split-K,
      combined by one small XLA reduction); num_warps/num_stages: Triton launch parameters."""

    block_s: int = 64
    num_splits: int = 1
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.block_s, int) or not is_pow2(self.block_s) or self.block_s < 16:
            raise ValueError(f"DecodeAttentionConfig.block_s must be a power of two >= 16, got "
                             f"{self.block_s!r}")
        if not isinstance(self.num_splits, int) or self.num_splits < 1:
            raise ValueError(f"DecodeAttentionConfig.num_splits must be an int >= 1, got "
                             f"{self.num_splits!r}")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"DecodeAttentionConfig.num_warps must be 1/2/4/8/16, got "
                             f"{self.num_warps!r}")
        if not isinstance(self.num_stages, int) or not 1 <= self.num_stages <= 8:
            raise ValueError(f"DecodeAttentionConfig.num_stages must be in 1..8, got "
                             f"{self.num_stages!r}")

    def replace(self, **kw) -> "DecodeAttentionConfig":
        return dataclasses.replace(self, **kw)


def split_len(max_len: int, cfg: DecodeAttentionConfig) -> int:
    """Cache positions per split: a multiple of block_s covering max_len in num_splits parts."""
    return cdiv(cdiv(max_len, cfg.num_splits), cfg.block_s) * cfg.block_s


def default_config(batch: int, n_kv_heads: int, max_len: int, *, sms: int = 132
                   ) -> DecodeAttentionConfig:
    """About four programs per SM: the decode step is bound by reading the cache, so every SM
    needs several programs streaming it; splits never get shorter than 4 blocks of 64."""
    block_s = 64
    programs = batch * n_kv_heads
    splits = max(1, min(cdiv(4 * sms, programs), cdiv(max_len, 4 * block_s)))
    return DecodeAttentionConfig(block_s=block_s, num_splits=splits)
