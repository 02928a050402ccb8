"""`--kv-cache bf16|int8|fp8|int4` for `jaxquant eval` and `jaxquant generate`: how the decoder
stores K/V, chosen independently of the weight recipe (the flag overrides a recipe's kv_cache)."""

from __future__ import annotations

import argparse
from typing import Any

from jaxquant.kernels.decode_attention.layouts import CLI_FORMATS, KVCacheSpec
from jaxquant.models import kv_cache
from jaxquant.recipes.recipe import Recipe


def add_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kv-cache", choices=CLI_FORMATS, default=None,
                   help="store the KV cache as bf16, int8, fp8 (E4M3) or int4 codes with one "
                        "float32 scale per token and head (default: the recipe's kv_cache, else "
                        "the model's compute dtype)")


def resolve(args: argparse.Namespace, recipe: Recipe | None) -> KVCacheSpec | None:
    """The flag's spec, else the recipe's kv_cache, else None (float cache)."""
    if args.kv_cache is not None:
        return KVCacheSpec(args.kv_cache)
    return recipe.kv_cache if recipe is not None else None


def report(config: Any, spec: KVCacheSpec | None) -> dict[str, Any]:
    """The --json entry: format, group size, cache bytes per token (all layers, K and V) and
    those of the float cache in the compute dtype."""
    return {"format": spec.format if spec else None,
            "group_size": spec.group_size if spec else None,
            "bytes_per_token": kv_cache.bytes_per_token(config, spec),
            "float_bytes_per_token": kv_cache.bytes_per_token(config, None)}
