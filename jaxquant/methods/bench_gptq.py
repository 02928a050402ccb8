"""Time block-sequential GPTQ on a Llama-3-8B-shaped decoder (random weights, real-sized
Hessians): seconds per decoder block, with progress bars; prints a table and writes JSON.

    python -m jaxquant.methods.bench_gptq [--blocks 3] [--calib-windows 64] [--seq-len 2048]
        [--act-order] [--out results.json]
    python -m jaxquant.methods.bench_gptq --shape tiny ...   # a small stand-in, for CPU tests
"""

from __future__ import annotations

import argparse
import datetime
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxquant as jq
from jaxquant.methods.sequential import quantize_calibrated
from jaxquant.models.llama import Llama, LlamaConfig


SHAPES = {  # d_model, n_heads, n_kv_heads, head_dim, ffn_dim
    "llama3-8b": (4096, 32, 8, 128, 14336),
    "tiny": (128, 4, 2, 32, 384),
}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", choices=tuple(SHAPES), default="llama3-8b")
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--calib-windows", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--act-order", action="store_true")
    p.add_argument("--out", default=None, help="write JSON here")
    args = p.parse_args(argv)

    d, heads, kv, hd, ffn = SHAPES[args.shape]
    cfg = LlamaConfig(vocab_size=4096, d_model=d, n_layers=args.blocks, n_heads=heads,
                      n_kv_heads=kv, head_dim=hd, ffn_dim=ffn, rope_theta=500000.0,
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
    row = {"date": datetime.date.today().isoformat(), "device": jax.devices()[0].device_kind,
           "jax": jax.__version__, "shape": args.shape, "d_model": d, "ffn_dim": ffn,
           "blocks": args.blocks, "calib_tokens": int(calib.size),
           "scheme": "int4 g128 bf16 scales", "act_order": args.act_order,
           "seconds_total": total, "seconds_per_block": report.block_seconds,
           # the first block includes compilation
           "steady_seconds_per_block": float(np.median(report.block_seconds[1:] or
                                                       report.block_seconds))}
    print(f"\nGPTQ, {args.shape}-shaped blocks, {row['calib_tokens']:,} calibration tokens, "
          f"{row['device']}\n")
    print("| block | seconds |\n|---|---|")
    for i, sec in enumerate(report.block_seconds):
        print(f"| {i}{' (compiles)' if i == 0 else ''} | {sec:.2f} |")
    print(f"| steady state per block | {row['steady_seconds_per_block']:.2f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(row, f, indent=1)
    return row


if __name__ == "__main__":
    main()
