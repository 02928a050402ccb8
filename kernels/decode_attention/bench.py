"""Decode with a bf16 vs int8 / fp8 / int4 KV cache on a Llama-3-8B-shaped model (random bf16
weights, 32 layers, d=4096, ffn 14336, GQA 32/8, head_dim 128, vocab 128256): tokens per second
at a batch and context, the largest batch whose cache fits in memory, and the attention op
alone (Pallas kernel vs XLA dequantize + einsum).

    XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 python -m jaxquant.kernels.decode_attention.bench \
        [--formats bf16,int8,fp8,int4] [--batch 32] [--context 8192] [--steps 16] [--small]

Method: the cache holds `context` positions and starts filled to context - 2 * steps - 4 (its
values do not change the work); a jitted one-token decode step (cache donated) is compiled and
warmed up, then `steps` dependent steps are timed, median of 3 runs -> tokens/s = batch / step.
Largest batch: the memory left after the weights, divided by the cache bytes of one sequence
(estimate), then checked by running decode steps: down from the estimate until one fits, then
up in steps of estimate / 32 until one does not.
Writes <date>-<device>-kv-cache-decode.json under $OUT (or kernels/benchmarks/results).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp

from jaxquant.kernels.benchmarks import harness as H
from jaxquant.kernels.benchmarks.decode_e2e import LLAMA3_8B, SMALL, random_params
from jaxquant.kernels.decode_attention.api import decode_attention
from jaxquant.kernels.decode_attention.layouts import KVCacheSpec
from jaxquant.models import kv_cache
from jaxquant.models.llama import Llama, LlamaConfig


def start_cache(cfg: LlamaConfig, batch: int, context: int, spec: KVCacheSpec, filled: int):
    cache = kv_cache.init_cache(cfg, batch, context, kv=spec)
    return dataclasses.replace(cache, length=jnp.int32(filled))


def time_decode(model: Llama, params: Any, batch: int, context: int, spec: KVCacheSpec,
                steps: int, runs: int = 3) -> float:
    """Median seconds per decode step at `batch` with `context` cache positions."""
    cache = start_cache(model.cfg, batch, context, spec, context - 2 * steps - 4)

    def step(p, tok, cache):
        logits, cache = model.apply(p, tok, cache=cache)
        return jnp.argmax(logits[:, -1], -1).astype(jnp.int32)[:, None], cache

    run = jax.jit(step, donate_argnums=(2,))
    tok = jnp.ones((batch, 1), jnp.int32)
    tok, cache = run(params, tok, cache)  # compile + warm-up
    tok, cache = run(params, tok, cache)
    jax.block_until_ready(tok)
    ts = []
    for _ in range(runs):
        cache = dataclasses.replace(cache, length=jnp.int32(context - 2 * steps - 2))
        t0 = time.perf_counter()
        for _ in range(steps):
            tok, cache = run(params, tok, cache)
        jax.block_until_ready(tok)
        ts.append((time.perf_counter() - t0) / steps)
    return statistics.median(ts)


def fits(model: Llama, params: Any, batch: int, context: int, spec: KVCacheSpec) -> bool:
    """Whether a cache of `batch` x `context` plus two decode steps runs without running out
    of device memory."""
    try:
        time_decode(model, params, batch, context, spec, steps=1, runs=1)
        return True
    except Exception as e:  # noqa: BLE001 - XlaRuntimeError / JaxRuntimeError by version
        if "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower():
            return False
        raise


def largest_batch(model: Llama, params: Any, context: int, spec: KVCacheSpec) -> dict:
    """Estimate from free memory, then confirm: the estimate runs, estimate + step does not
    (moving down while the estimate fails)."""
    per_seq = kv_cache.bytes_per_token(model.cfg, spec) * context
    stats = jax.devices()[0].memory_stats() or {}
    limit, used = stats.get("bytes_limit"), stats.get("bytes_in_use", 0)
    if not limit:
        return {"estimate": None, "note": "device reports no memory limit"}
    workspace = 2 << 30  # activations, logits, compiler scratch
    est = max(1, int((limit - used - workspace) // per_seq))
    step = max(1, est // 32)
    b, tried = est, []
    while b >= 1:
        ok = fits(model, params, b, context, spec)
        tried.append((b, ok))
        if ok:
            break
        b -= step
    while True:  # step up until a batch does not fit (the estimate may be conservative)
        above = b + step
        ok_above = fits(model, params, above, context, spec)
        tried.append((above, ok_above))
        if not ok_above:
            break
        b = above
    return {"estimate": est, "largest_confirmed": b, "next_tried": above,
            "next_fits": ok_above, "tried": tried, "cache_bytes_per_sequence": per_seq,
            "bytes_limit": limit, "bytes_in_use_before": used}


def time_op(cfg: LlamaConfig, batch: int, context: int, spec: KVCacheSpec) -> dict:
    """The attention op of one layer alone: Pallas kernel (default path) vs XLA."""
    c = dataclasses.replace(cfg, n_layers=1)
    cache = start_cache(c, batch, context, spec, context - 1)
    q = jax.random.normal(jax.random.key(0), (batch, cfg.n_heads, cfg.head_dim), jnp.bfloat16)
    lengths = jnp.full((batch,), context, jnp.int32)
    out = {}
    for impl in (None, "xla"):
        f = jax.jit(lambda q, k, v, ks, vs, impl=impl: decode_attention(
            q, k, v, lengths, spec=spec, k_scale=ks, v_scale=vs, layer=0, implementation=impl))
        args = (q, cache.k, cache.v, cache.k_scale, cache.v_scale)
        jax.block_until_ready(f(*args))
        ts = []
        for _ in range(10):
            t0 = time.perf_counter()
            jax.block_until_ready(f(*args))
            ts.append(time.perf_counter() - t0)
        out["kernel_us" if impl is None else "xla_us"] = statistics.median(ts) * 1e6
    out["cache_bytes_read"] = cache.nbytes
    out["kernel_GBps"] = cache.nbytes / out["kernel_us"] / 1e3
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--formats", default="bf16,int8,fp8,int4")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--context", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--no-max-batch", action="store_true", help="skip the largest-batch search")
    ap.add_argument("--small", action="store_true", help="a tiny model (CPU smoke test)")
    args = ap.parse_args(argv)
    cfg = SMALL if args.small else LLAMA3_8B
    specs = [KVCacheSpec(f) for f in args.formats.split(",")]
    dev = jax.devices()[0]
    model, params = Llama(cfg), random_params(cfg)
    print(f"device {dev.device_kind}, jax {jax.__version__}; {cfg.n_layers} layers, "
          f"d={cfg.d_model}, GQA {cfg.n_heads}/{cfg.n_kv_heads}; batch {args.batch}, context "
          f"{args.context}", flush=True)
    print("cache | bytes/token | ms/step | tok/s | x bf16 | attn op kernel us | XLA us | "
          "largest batch", flush=True)
    rows, base = [], None
    for spec in specs:
        s = time_decode(model, params, args.batch, args.context, spec, args.steps)
        base = base or s
        row = dict(kv_cache=spec.format, batch=args.batch, context=args.context,
                   bytes_per_token=kv_cache.bytes_per_token(cfg, spec), ms_per_step=s * 1e3,
                   tok_per_s=args.batch / s, vs_first=base / s,
                   op=time_op(cfg, args.batch, args.context, spec))
        if not args.no_max_batch:
            row["max_batch"] = largest_batch(model, params, args.context, spec)
        rows.append(row)
        mb = row.get("max_batch", {}).get("largest_confirmed", "-")
        print(f"{spec.format} | {row['bytes_per_token']:,} | {s * 1e3:.2f} | {args.batch / s:.1f} |"
              f" {row['vs_first']:.2f} | {row['op']['kernel_us']:.0f} | {row['op']['xla_us']:.0f} |"
              f" {mb}", flush=True)
    meta = dict(kernel="_meta", device=dev.device_kind, jax=jax.__version__,
                date=datetime.date.today().isoformat(), steps=args.steps,
                config=dataclasses.asdict(cfg) | {"dtype": "bfloat16"},
                method=__doc__.split("Method: ")[1].split("Writes")[0].strip())
    root = os.environ.get("OUT") or os.path.join(os.path.dirname(__file__), "..", "benchmarks",
                                                 "results")
    kind = str(dev.device_kind).replace(" ", "_")
    H.write_json(os.path.join(root, f"{meta['date']}-{kind}-kv-cache-decode.json"), [meta] + rows)
    return rows


if __name__ == "__main__":
    main()
