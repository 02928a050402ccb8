"""Calibrated PTQ on a small Llama: RTN vs GPTQ vs AWQ at int3, and W8A8 with SmoothQuant.

    python examples/calibrated_ptq.py [--d-model 256] [--layers 2] [--windows 16]

Each method quantizes the decoder blocks one at a time on calibration windows (the next block's
inputs come from the quantized block); the script prints every method's relative logit error on
held-out windows and how long it took. On SmolLM2 the same recipes run as
`jaxquant eval --model smollm2-135m --recipe w4a16 --method gptq` (see the README's tables).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxquant as jq
from jaxquant.methods.sequential import quantize_calibrated
from jaxquant.models.llama import Llama, LlamaConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--windows", type=int, default=16, help="calibration windows of 64 tokens")
    args = p.parse_args()

    cfg = LlamaConfig(vocab_size=512, d_model=args.d_model, n_layers=args.layers, n_heads=4,
                      n_kv_heads=2, head_dim=args.d_model // 4, ffn_dim=2 * args.d_model)
    model = Llama(cfg)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (args.windows + 4, 64)).astype(np.int32)
    params = model.init(jax.random.key(0), jnp.asarray(tokens[:1]))
    emb = params["params"]["embed"]["embedding"]  # an outlier channel, as trained LLMs have
    params["params"]["embed"]["embedding"] = emb.at[:, 3].multiply(20.0)
    calib, held_out = tokens[: args.windows], jnp.asarray(tokens[args.windows:])
    ref = model.apply(params, held_out)[0]

    def error(qparams) -> float:
        with jq.intercept():
            out = jax.jit(lambda p, t: model.apply(p, t)[0])(qparams, held_out)
        return float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))

    int3 = jq.WeightScheme("int3", group_size=64)
    recipes = {f"int3 g64 {m}": jq.Recipe((jq.Rule((r"re:layers_\d+/.*kernel$",), int3,
                                                   method=m),), name=m)
               for m in ("rtn", "gptq", "awq")}
    recipes["w8a8-int8"] = "w8a8-int8"
    recipes["w8a8-smoothquant"] = "w8a8-smoothquant"
    print(f"{'recipe':<20} {'logit error':>12} {'seconds':>8}")
    for name, recipe in recipes.items():
        start = time.perf_counter()
        qparams, _ = quantize_calibrated(model, params, recipe, calib, progress=False)
        seconds = time.perf_counter() - start
        print(f"{name:<20} {error(qparams):12.4f} {seconds:8.1f}")


if __name__ == "__main__":
    main()
