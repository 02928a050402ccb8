"""Time block-sequential GPTQ on a Llama-3-8B-shaped decoder (random weights, real-sized
Hessians): seconds per decoder block, with progress bars.

    python -m jaxquant.methods.bench_gptq [--blocks 2] [--calib-windows 64] [--seq-len 2048]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxquant as jq
from jaxquant.methods.sequential import quantize_calibrated
from jaxquant.models.llama import Llama, LlamaConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--calib-windows", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--act-order", action="store_true")
    args = p.parse_args()

    cfg = LlamaConfig(vocab_size=4096, d_model=4096, n_layers=args.blocks, n_heads=32,
                      n_kv_heads=8, head_dim=128, ffn_dim=14336, rope_theta=500000.0,
                      tie_embeddings=False)
    model = Llama(cfg)
    tokens = jnp.zeros((1, 8), jnp.int32)
    params = jax.jit(model.init)(jax.random.key(0), tokens)
    calib = np.random.default_rng(0).integers(0, cfg.vocab_size,
                                              (args.calib_windows, args.seq_len)).astype(np.int32)
    rule = jq.Rule(("re:layers_\\d+/.*kernel$",),
                   jq.WeightScheme("int4", "group", 128, scale_dtype="bfloat16"),
                   method="gptq", method_args={"act_order": args.act_order})
    recipe = jq.Recipe((rule,), name="w4a16-gptq")
    start = time.perf_counter()
    _, report = quantize_calibrated(model, params, recipe, calib, batch_size=args.batch_size)
    total = time.perf_counter() - start
    row = {"device": jax.devices()[0].device_kind, "blocks": args.blocks,
           "calib_tokens": int(calib.size), "seconds_total": total,
           "seconds_per_block": report.block_seconds,
           "steady_seconds_per_block": float(np.median(report.block_seconds[1:] or
                                                       report.block_seconds)),
           "act_order": args.act_order}
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
