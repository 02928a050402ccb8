"""Tensor-parallel layout of the reference Llama decoder (Megatron style).

Column-parallel (output features split over the model axis): q/k/v_proj, gate/up_proj, and an
untied lm_head (vocabulary split). Row-parallel (input features split; partial outputs summed):
o_proj, down_proj. Embedding and norms are replicated. Splitting q/k/v by output columns splits
whole heads, so n_heads and n_kv_heads must be multiples of the model-axis size.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from jax.sharding import Mesh, PartitionSpec

from jaxquant.models.llama import LlamaConfig
from jaxquant.sharding.specs import ShardingError, axis_size
from jaxquant.tree_paths import map_with_path

P = PartitionSpec
COLUMN_PARALLEL = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "lm_head")
ROW_PARALLEL = ("o_proj", "down_proj")
_LAYER = re.compile(r"(?:^|/)([a-z_]+)/kernel$")


def check_tp_config(cfg: LlamaConfig, tp: int) -> None:
    """ShardingError unless `cfg` splits into `tp` equal tensor-parallel parts."""
    if cfg.fused_projections:
        raise ShardingError("tensor parallelism splits q/k/v and gate/up separately; build the "
                            "model with fused_projections=False")
    for name in ("n_heads", "n_kv_heads", "ffn_dim"):
        v = getattr(cfg, name)
        if v % tp:
            raise ShardingError(f"LlamaConfig.{name}={v} is not a multiple of the model-axis "
                                f"size {tp}; use a model axis of a size dividing {v}")
    if not cfg.tie_embeddings and cfg.vocab_size % tp:
        raise ShardingError(f"LlamaConfig.vocab_size={cfg.vocab_size} is not a multiple of the "
                            f"model-axis size {tp} (the untied lm_head is split by vocabulary)")


def layer_kind(path: str) -> str | None:
    """"column", "row" or None (replicated) for a parameter path."""
    m = _LAYER.search(path)
    if m is None:
        return None
    if m.group(1) in COLUMN_PARALLEL:
        return "column"
    if m.group(1) in ROW_PARALLEL:
        return "row"
    return None


def llama_tp_specs(params: Any, cfg: LlamaConfig, mesh: Mesh, model_axis: str = "model") -> Any:
    """A tree of PartitionSpec like `params` (float Llama parameters, real or abstract):
    column-parallel kernels P(None, model_axis), row-parallel P(model_axis, None), the rest
    replicated."""
    check_tp_config(cfg, axis_size(mesh, model_axis))
    specs = {"column": P(None, model_axis), "row": P(model_axis, None), None: P()}
    return map_with_path(lambda path, _: specs[layer_kind(path)], params)


def local_config(cfg: LlamaConfig, tp: int) -> LlamaConfig:
    """The config of one tensor-parallel shard: heads and FFN width divided by `tp` (the
    vocabulary stays whole: the embedding is replicated)."""
    check_tp_config(cfg, tp)
    return dataclasses.replace(cfg, n_heads=cfg.n_heads // tp, n_kv_heads=cfg.n_kv_heads // tp,
                               ffn_dim=cfg.ffn_dim // tp)
