"""W4A16 weights in the GPU layout: quantize a bf16 Llama-shaped model with the `w4a16` preset,
relayout it once for the Mosaic GPU kernel (jaxquant.inference.to_gpu_layout), decode a few
tokens, and print which path each layer took and how close the logits are to the canonical
layout's. On a Hopper GPU the matmuls run the Mosaic kernel; elsewhere XLA dequantizes.

    python examples/gpu_layout_w4a16.py [--d-model 1024] [--layers 2] [--steps 8]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

import jaxquant as jq
from jaxquant.inference import to_canonical, to_gpu_layout
from jaxquant.models.llama import Llama, LlamaConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d-model", type=int, default=1024)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    args = p.parse_args()
    d = args.d_model
    cfg = LlamaConfig(vocab_size=512, d_model=d, n_layers=args.layers, n_heads=d // 64,
                      n_kv_heads=max(1, d // 256), head_dim=64, ffn_dim=4 * d, max_seq_len=256,
                      dtype=jnp.bfloat16)
    model = Llama(cfg)
    tokens = jnp.arange(8, dtype=jnp.int32)[None] % cfg.vocab_size
    params = model.init(jax.random.key(0), tokens)
    qparams = jq.quantize(params, "w4a16")
    gparams = to_gpu_layout(qparams)  # once, after quantizing or restoring
    layouts = {x.meta.layout for x in jax.tree_util.tree_leaves(gparams, is_leaf=jq.is_qarray)
               if jq.is_qarray(x)}
    print(f"device {jax.devices()[0].device_kind}; quantized leaf layouts: {sorted(layouts)}")

    def step(p, tok, cache):
        logits, cache = model.apply(p, tok, cache=cache)
        return logits[:, -1], cache

    outs = {}
    for name, p_ in (("canonical", qparams), ("gpu layout", gparams)):
        with jq.intercept(report=True) as rep:  # active while the steps are traced
            run = jax.jit(step)
            logits, cache = run(p_, tokens, model.init_cache(1, 8 + args.steps + 1, jnp.bfloat16))
            tok = jnp.argmax(logits, -1)[:, None].astype(jnp.int32)
            logits, cache = run(p_, tok, cache)  # compiles the one-token step
            t0 = time.perf_counter()
            for _ in range(args.steps):
                tok = jnp.argmax(logits, -1)[:, None].astype(jnp.int32)
                logits, cache = run(p_, tok, cache)
            jax.block_until_ready(logits)
        ms = (time.perf_counter() - t0) / args.steps * 1e3
        paths = sorted({path for _, _, path in rep.rows})
        outs[name] = logits.astype(jnp.float32)
        print(f"{name:10s}: paths {paths}, {ms:.2f} ms per decode step")
    err = float(jnp.linalg.norm(outs["gpu layout"] - outs["canonical"])
                / jnp.linalg.norm(outs["canonical"]))
    print(f"last logits, gpu layout vs canonical: rel. error {err:.2e}")
    back = to_canonical(gparams)  # e.g. before saving; checkpoints do this themselves
    print("to_canonical restores the packed codes:", all(
        bool((a.qvalue == b.qvalue).all())
        for a, b in zip(jax.tree_util.tree_leaves(qparams, is_leaf=jq.is_qarray),
                        jax.tree_util.tree_leaves(back, is_leaf=jq.is_qarray)) if jq.is_qarray(a)))


if __name__ == "__main__":
    main()
