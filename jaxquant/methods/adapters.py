"""How the sequential calibration walks a model: embedding, decoder blocks, and which operation
precedes each group of layers that share an input (where AWQ/SmoothQuant scales fold)."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import Array

from jaxquant.core.qarray import QArray
from jaxquant.inference.embedding import take_rows
from jaxquant.models.llama import DecoderLayer, Llama


@dataclasses.dataclass(frozen=True)
class FoldMapping:
    """Layers (paths relative to the block, e.g. "attn/q_proj") that read the output of `prev`
    ("input_norm" an RMSNorm scale, or "mlp/up_proj" a linear whose output channels feed them)."""

    prev: str
    prev_kind: str  # "norm" | "linear"
    layers: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class LlamaAdapter:
    """Sequential view of jaxquant.models.Llama."""

    model: Llama

    @property
    def n_blocks(self) -> int:
        return self.model.cfg.n_layers

    def block_path(self, i: int) -> str:
        return f"params/layers_{i}"

    def block_params(self, params: Any, i: int) -> dict:
        return params["params"][f"layers_{i}"]

    def block_module(self, i: int) -> nn.Module:
        return DecoderLayer(self.model.cfg, i)

    def shared_block_module(self) -> nn.Module:
        """One module that runs any block given its params: a block's index only addresses the
        KV cache, which calibration does not use, so one compiled function serves all blocks."""
        return DecoderLayer(self.model.cfg, 0)

    def block_args(self, hidden: Array) -> tuple:
        b, t, _ = hidden.shape
        return (jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)), None)

    def embed(self, params: Any, tokens: Array) -> Array:
        table = params["params"]["embed"]["embedding"]
        if isinstance(table, QArray):
            return take_rows(table, tokens, self.model.cfg.dtype)
        return jnp.take(table, tokens, axis=0).astype(self.model.cfg.dtype)

    def fold_mappings(self) -> tuple[FoldMapping, ...]:
        c = self.model.cfg
        maps = [
            FoldMapping("input_norm", "norm", ("attn/q_proj", "attn/k_proj", "attn/v_proj")),
            FoldMapping("post_attn_norm", "norm", ("mlp/gate_proj", "mlp/up_proj")),
            FoldMapping("mlp/up_proj", "linear", ("mlp/down_proj",)),
        ]
        if c.n_heads == c.n_kv_heads:  # with GQA, v's channels feed several heads of o
            maps.append(FoldMapping("attn/v_proj", "linear", ("attn/o_proj",)))
        return tuple(maps)
