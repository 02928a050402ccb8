"""Tensor-parallel W4A16 decode of a Llama-3-8B-shaped model on N devices against one device.

Random weights (decode speed does not depend on their values): 32 layers, d=4096, ffn 14336,
GQA 32/8, head_dim 128, vocab 128256, untied head, bf16 compute; the `w4a16` preset (int4 g128,
bf16 scales; embedding and head stay bf16). The quantized tree is made leaf by leaf directly in
its sharded layout (a float leaf is generated and quantized under jit with out_shardings, so no
device ever holds the float model). Two setups, each in its own process so that the runtime's
memory counters belong to it alone:
  tp      make_tp_apply over a ("model",) mesh of --tp devices: shard_map, column-parallel
          q/k/v/gate/up/head, row-parallel o/down with psum, the Pallas W4A16 kernel per shard
          (backend "auto": on GPU where it applies), KV cache split by kv heads;
  single  the model's own forward under jaxquant.intercept() on one device.
A jitted greedy decode step (cache donated) is compiled, then `steps` consecutive tokens are
timed end to end, three times; the median gives seconds per step and tokens/s = batch / step.
Memory per device: bytes of the parameters and cache each device holds (addressable shards)
and, where the runtime reports it (GPU), bytes in use and peak.

    python -m jaxquant.sharding.bench_tp [--tp 2] [--batch 1] [--steps 64] [--tiny] [--out F]

Writes jaxquant/evaluation/results/2026-11-25-<device>-tp<N>-w4a16-decode.json (or --out).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

import jaxquant as jq
from jaxquant.inference import dispatch
from jaxquant.models.llama import Llama, LlamaConfig
from jaxquant.recipes.io import resolve_recipe
from jaxquant.sharding.llama_tp import llama_tp_specs
from jaxquant.sharding.memory import device_bytes, live_device_memory
from jaxquant.sharding.specs import named_shardings, qarray_spec
from jaxquant.sharding.tp_forward import init_tp_cache, make_tp_apply
from jaxquant.transform import quantize_leaf
from jaxquant.tree_paths import flatten

P = PartitionSpec
LLAMA3_8B = LlamaConfig(vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                        head_dim=128, ffn_dim=14336, rope_theta=500000.0, tie_embeddings=False,
                        max_seq_len=8192, dtype=jnp.bfloat16)
TINY = dataclasses.replace(LLAMA3_8B, vocab_size=512, d_model=256, n_layers=2, n_heads=8,
                           n_kv_heads=2, head_dim=32, ffn_dim=512)
RESULTS = Path(__file__).resolve().parent.parent / "evaluation" / "results"


def random_quantized_params(cfg: LlamaConfig, recipe: str, mesh: Mesh, seed: int = 0) -> Any:
    """{"params": ...} of `cfg`: N(0, 0.02) matrices quantized by `recipe` where it targets
    them (else bf16), unit norm scales; each leaf made under jit directly in the tensor-parallel
    layout of `mesh` (axis "model"; a 1-device mesh gives the single-device tree)."""
    rec = resolve_recipe(recipe)
    shapes = jax.eval_shape(Llama(cfg).init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    specs = dict(flatten(llama_tp_specs(shapes, cfg, mesh))[0])
    items, treedef = flatten(shapes)
    key = jax.random.key(seed)
    out = []
    for i, (path, s) in enumerate(items):
        found = rec.rule_for(path)

        def make(k, path=path, s=s, found=found):
            if "norm" in path:
                return jnp.ones(s.shape, jnp.bfloat16)
            x = 0.02 * jax.random.normal(k, s.shape, jnp.float32)
            return quantize_leaf(path, x, found[1]) if found else x.astype(jnp.bfloat16)

        k = jax.random.fold_in(key, i)
        abstract = jax.eval_shape(make, k)
        spec = (qarray_spec(abstract, specs[path], mesh, path) if jq.is_qarray(abstract)
                else specs[path])
        out.append(jax.jit(make, out_shardings=named_shardings(spec, mesh))(k))
    return jax.tree_util.tree_unflatten(treedef, out)


def decode(step, params: Any, cache: Any, batch: int, steps: int) -> tuple[float, list[int]]:
    """(median seconds per step over 3 timed runs of `steps` tokens, the greedy ids of the first
    run for sequence 0)."""
    tok, cache = step(params, jnp.ones((batch, 1), jnp.int32), cache)  # compile
    jax.block_until_ready(tok)
    ts, ids = [], []
    for run in range(3):
        seq = []
        t0 = time.perf_counter()
        for _ in range(steps):
            tok, cache = step(params, tok, cache)
            if run == 0:
                seq.append(tok)
        jax.block_until_ready(tok)
        ts.append((time.perf_counter() - t0) / steps)
        if run == 0:
            ids = [int(t[0, 0]) for t in seq]
    return statistics.median(ts), ids


def run_setup(setup: str, cfg: LlamaConfig, tp: int, batch: int, steps: int,
              backend: str) -> dict:
    """One setup ("tp" or "single") in this process: build, decode, measure."""
    n = tp if setup == "tp" else 1
    devices = jax.devices()[:n]
    if len(devices) < n:
        raise SystemExit(f"--tp {tp} needs {tp} devices, this machine has {len(jax.devices())}")
    mesh = Mesh(np.array(devices), ("model",))
    model = Llama(cfg)
    t0 = time.perf_counter()
    params = random_quantized_params(cfg, "w4a16", mesh)
    jax.block_until_ready(params)
    build_s = time.perf_counter() - t0
    max_len = 3 * steps + 16
    if setup == "tp":
        from jaxquant.sharding.specs import tree_specs

        qspecs = tree_specs(params, llama_tp_specs(params, cfg, mesh), mesh)
        apply = make_tp_apply(model, mesh, qspecs)
        cache = init_tp_cache(model, mesh, batch, max_len)
        ctx = dispatch.settings(backend=backend, report=True)
    else:
        apply = lambda p, t, c: model.apply(p, t, cache=c)  # noqa: E731
        cache = jax.device_put(model.init_cache(batch, max_len), devices[0])
        ctx = jq.intercept(backend=backend, report=True)

    def step(p, tok, c):
        logits, c = apply(p, tok, c)
        return jnp.argmax(logits[:, -1], -1).astype(jnp.int32)[:, None], c

    cache_bytes = device_bytes(cache)
    with ctx as rep:
        run = jax.jit(step, donate_argnums=(2,))
        sec, ids = decode(run, params, cache, batch, steps)
    return {
        "setup": setup, "devices": n, "device_kind": devices[0].device_kind,
        "seconds_per_step": sec, "tokens_per_s": batch / sec, "build_seconds": build_s,
        "param_bytes_per_device": device_bytes(params), "cache_bytes_per_device": cache_bytes,
        "live_memory": live_device_memory(),
        "paths": sorted({p for _, _, p in rep.rows}), "greedy_ids": ids,
    }


def _child(setup: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "jaxquant.sharding.bench_tp", "--setup", setup,
           "--tp", str(args.tp), "--batch", str(args.batch), "--steps", str(args.steps),
           "--backend", args.backend] + (["--tiny"] if args.tiny else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{setup} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("JSON:")][-1]
    return json.loads(line[5:])


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def table(rows: list[dict]) -> str:
    lines = ["| setup | devices | tokens/s | ms/step | params per device | peak per device |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        params = max(r["param_bytes_per_device"].values())
        peaks = [m.get("peak_bytes_in_use", 0) for m in r["live_memory"].values()]
        peak = _gib(max(peaks)) if peaks and max(peaks) else "n/a (CPU)"
        lines.append(f"| {r['setup']} | {r['devices']} | {r['tokens_per_s']:.1f} | "
                     f"{1e3 * r['seconds_per_step']:.2f} | {_gib(params)} | {peak} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tp", type=int, default=2, help="devices of the tensor-parallel setup")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=64, help="decode steps per timed run")
    ap.add_argument("--backend", default="auto", choices=("auto", "xla", "pallas"))
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model (CPU test)")
    ap.add_argument("--setup", choices=("tp", "single"), help=argparse.SUPPRESS)
    ap.add_argument("--out", help="JSON path (default: jaxquant/evaluation/results/...)")
    args = ap.parse_args(argv)
    cfg = TINY if args.tiny else LLAMA3_8B
    if args.setup:  # child process: one setup
        res = run_setup(args.setup, cfg, args.tp, args.batch, args.steps, args.backend)
        print("JSON:" + json.dumps(res))
        return res
    rows = [_child("single", args), _child("tp", args)]
    same = [a == b for a, b in zip(rows[0].pop("greedy_ids"), rows[1].pop("greedy_ids"))]
    device = rows[1]["device_kind"]
    result = {
        "date": datetime.date.today().isoformat(), "device": device, "jax": jax.__version__,
        "model": "tiny" if args.tiny else "llama-3-8b-shape", "config": {
            k: v for k, v in dataclasses.asdict(cfg).items() if k != "dtype"},
        "recipe": "w4a16 (int4 g128, bf16 scales; embedding and head bf16)",
        "batch": args.batch, "steps": args.steps, "backend": args.backend,
        "greedy_ids_agree": float(np.mean(same)) if same else None,
        "speedup": rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"],
        "rows": rows,
    }
    name = f"2026-11-25-{device.replace(' ', '-').lower()}-tp{args.tp}-w4a16-decode.json"
    out = Path(args.out) if args.out else RESULTS / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(table(rows))
    print(f"speedup {result['speedup']:.2f}x, greedy ids agree {result['greedy_ids_agree']}; "
          f"wrote {out}")
    return result


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
