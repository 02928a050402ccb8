"""QLoRA: low-rank adapters (bf16 by default) on the Dense layers of a frozen quantized base.

    base = jaxquant.quantize(params, "nf4")                   # NF4, double-quantized scales
    cfg = LoraConfig(rank=16, alpha=32)
    adapters = init_adapters(jax.random.key(0), base, cfg)   # the only trainable tree
    logits = lora_apply(model, base, adapters, cfg, tokens)  # base runs through jq.intercept()
    merged = merge_adapters(base, adapters, cfg, "nf4")      # re-quantized, adapters folded in

A targeted layer computes y = x @ W_q + (alpha / rank) * (x @ A) @ B with A [in, rank] and
B [rank, out] (B starts at zero, so training starts from the quantized model). The base stays a
tree of QArrays throughout: it is an argument of the training step, never a trainable leaf.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import Array

import jaxquant as jq
from jaxquant.core.qarray import QArray
from jaxquant.errors import JaxquantError, LeafError
from jaxquant.recipes.recipe import Recipe
from jaxquant.tree_paths import flatten, map_with_path


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """rank, alpha (the update is scaled by alpha / rank), targets (regexes over the layer path
    such as 'layers_0/mlp/up_proj'; default: every quantized 2-D Dense kernel of the base), the
    adapters' dtype."""

    rank: int = 16
    alpha: float = 32.0
    targets: tuple[str, ...] = (".*",)
    dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise JaxquantError(f"LoRA rank={self.rank} must be >= 1")
        if not self.alpha > 0:
            raise JaxquantError(f"LoRA alpha={self.alpha} must be positive")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def lora_config_from_recipe(recipe: Recipe, rank: int | None = None, alpha: float | None = None
                            ) -> LoraConfig:
    """LoRA settings from the first rule's method_args (lora_rank, lora_alpha, lora_targets),
    overridden by explicit rank/alpha."""
    args = recipe.rules[0].method_args
    targets = args.get("lora_targets", (".*",))
    return LoraConfig(rank=int(rank or args.get("lora_rank", 16)),
                      alpha=float(alpha or args.get("lora_alpha", 32.0)),
                      targets=(targets,) if isinstance(targets, str) else tuple(targets))


def _layer(path: str) -> str:
    parts = path.split("/")
    return "/".join(parts[1:-1] if parts[0] == "params" else parts[:-1])


def init_adapters(key: Array, base: Any, config: LoraConfig) -> dict[str, dict[str, Array]]:
    """{layer path: {"a": [in, rank], "b": [rank, out]}} for every quantized 2-D kernel of `base`
    (a quantized tree) that config.targets selects. A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0."""
    kernels = [(p, leaf) for p, leaf in flatten(base)[0]
               if isinstance(leaf, QArray) and p.endswith("/kernel") and leaf.ndim == 2
               and any(re.search(t, _layer(p)) for t in config.targets)]
    if not kernels:
        raise JaxquantError("no quantized 2-D Dense kernel matches the LoRA targets "
                            f"{list(config.targets)}; quantize the base first (e.g. recipe nf4)")
    dtype = jnp.dtype(config.dtype)
    adapters = {}
    for i, (path, w) in enumerate(kernels):
        d_in, d_out = w.shape
        bound = 1.0 / d_in ** 0.5
        a = jax.random.uniform(jax.random.fold_in(key, i), (d_in, config.rank), jnp.float32,
                               -bound, bound)
        adapters[_layer(path)] = {"a": a.astype(dtype), "b": jnp.zeros((config.rank, d_out), dtype)}
    return adapters


def lora_interceptor(adapters: dict[str, dict[str, Array]], scale: float):
    """nn.intercept_methods hook adding scale * (x @ a) @ b to the adapted Dense layers."""

    def interceptor(next_fun, args, kwargs, context):
        ad = adapters.get("/".join(context.module.path))
        if ad is None or context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        if not isinstance(context.module, nn.Dense):
            raise JaxquantError(f"{'/'.join(context.module.path)}: LoRA adapters apply to "
                                f"nn.Dense layers, not {type(context.module).__name__}")
        y = next_fun(*args, **kwargs)
        x = args[0].astype(ad["a"].dtype)
        delta = (x @ ad["a"]) @ ad["b"]
        return y + (scale * delta.astype(jnp.float32)).astype(y.dtype)

    return interceptor


def lora_apply(module: nn.Module, base: Any, adapters: dict[str, dict[str, Array]],
               config: LoraConfig, *args: Any, **kwargs: Any) -> Any:
    """module.apply(base, ...) with QArray layers run quantized (jaxquant.intercept) plus the
    adapters' low-rank update. Differentiable in `adapters`."""
    # entered first, the adapter hook wraps jaxquant's hook and sees the quantized output
    with nn.intercept_methods(lora_interceptor(adapters, config.scale)), jq.intercept():
        return module.apply(base, *args, **kwargs)


def check_base(base: Any) -> None:
    """LeafError unless `base` holds quantized kernels (QLoRA trains adapters on a frozen
    quantized base, never the float weights)."""
    if not any(isinstance(leaf, QArray) for _, leaf in flatten(base)[0]):
        raise LeafError("the QLoRA base has no quantized weights; quantize it first "
                        "(jaxquant.quantize(params, 'nf4'))")


def merged_weights(base: Any, adapters: dict[str, dict[str, Array]], config: LoraConfig) -> Any:
    """The float tree of base + adapters: W = dequantize(W_q) + scale * A @ B, in f32."""
    def merge(path: str, leaf: Any) -> Any:
        w = leaf.dequantize(jnp.float32) if isinstance(leaf, QArray) else leaf
        ad = adapters.get(_layer(path)) if path.endswith("/kernel") else None
        if ad is None:
            return w
        return w + config.scale * (ad["a"].astype(jnp.float32) @ ad["b"].astype(jnp.float32))

    return map_with_path(merge, base)


def merge_adapters(base: Any, adapters: dict[str, dict[str, Array]], config: LoraConfig,
                   recipe: Recipe | str | os.PathLike) -> Any:
    """Fold the adapters into the base (merged_weights) and quantize again with `recipe`."""
    return jq.quantize(merged_weights(base, adapters, config), recipe)
