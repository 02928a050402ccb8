"""A quantized KV cache on a small random Llama: decode with bf16 / int8 / fp8 / int4 caches,
compare logits and greedy tokens with the float cache, and print cache bytes per token.

    python examples/kv_cache_quantization.py [--layers 4] [--new-tokens 16]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from jaxquant.models import kv_cache
from jaxquant.models.generate import generate, module_apply
from jaxquant.models.llama import Llama, LlamaConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=16)
    args = p.parse_args()
    cfg = LlamaConfig(vocab_size=256, d_model=128, n_layers=args.layers, n_heads=4, n_kv_heads=2,
                      head_dim=32, ffn_dim=256, max_seq_len=256)
    model = Llama(cfg)
    prompt = [int(t) for t in np.random.default_rng(0).integers(0, 256, 12)]
    params = model.init(jax.random.key(0), jnp.asarray([prompt], jnp.int32))
    full, _ = model.apply(params, jnp.asarray([prompt], jnp.int32))  # no cache: float K/V
    apply_fn = module_apply(model)
    base = None
    print("cache   bytes/token  logits rel. err  greedy tokens")
    for kv in (None, "bf16", "int8", "fp8", "int4"):
        cache = model.init_cache(1, 32, kv=kv)  # K/V stored in this format
        logits, _ = model.apply(params, jnp.asarray([prompt], jnp.int32), cache=cache)
        err = float(jnp.linalg.norm(logits - full) / jnp.linalg.norm(full))
        ids = generate(apply_fn, params, lambda b, n, kv=kv: model.init_cache(b, n, kv=kv),
                       prompt, max_new_tokens=args.new_tokens)
        base = base or ids
        diff = [i for i, (a, b) in enumerate(zip(ids, base)) if a != b]
        same = f"differ from token {diff[0]}" if diff else "same as float"
        print(f"{kv or 'float32':7} {kv_cache.bytes_per_token(cfg, kv):11,}  {err:15.2e}  {same}")


if __name__ == "__main__":
    main()
