"""End-to-end decode of a Llama-3-8B-shaped decoder: bf16 vs W4A16 (Pallas kernel) vs W4A16
through XLA's dequantize-then-dot, tokens per second at several batch sizes, weight memory.

Variants: bf16 and W4A16 weights (the `w4a16` preset: int4 g128, head and embedding in bf16;
"+head" quantizes the output head too), with separate q/k/v and gate/up layers or "fused" into
qkv_proj and gate_up_proj (LlamaConfig.fused_projections: fewer, wider matmuls per block).
Random weights (the speed of a matmul does not depend on its values), 32 layers, d=4096,
ffn 14336, GQA 32/8, head_dim 128, vocab 128256, untied head. Each variant runs the model's
own Linen forward under jaxquant.intercept() with a KV cache: a jitted decode step (cache donated)
is warmed up, then `steps` consecutive tokens are timed end to end (the next token is the
argmax of the last logits, so every step depends on the one before, as in real decoding;
the cache holds 3 * steps + 8 positions, so attention is a small part of each step);
the median of three such runs gives seconds per step and tokens/s = batch / step.

    python -m jaxquant.kernels.benchmarks.decode_e2e [--batches 1,8,32,64] [--variants ...]
        [--profile] [--layers 32] [--small]

Writes kernels/benchmarks/results/<date>-<device>-decode.json (or $OUT/... when OUT is set).
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
import numpy as np

import jaxquant as jq
from jaxquant.kernels.benchmarks import harness as H
from jaxquant.inference.gpu_layout import to_gpu_layout
from jaxquant.kernels.autotune import device_us
from jaxquant.models.llama import Llama, LlamaConfig, fuse_projections
from jaxquant.recipes.recipe import DEFAULT_IGNORE, DEFAULT_TARGETS, Recipe, Rule

LLAMA3_8B = LlamaConfig(vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                        head_dim=128, ffn_dim=14336, rope_theta=500000.0,
                        tie_embeddings=False, max_seq_len=8192, dtype=jnp.bfloat16)
SMALL = dataclasses.replace(LLAMA3_8B, vocab_size=512, d_model=256, n_layers=2, n_heads=4,
                            n_kv_heads=2, head_dim=64, ffn_dim=512)


def random_params(cfg: LlamaConfig, seed: int = 0) -> dict[str, Any]:
    """{"params": ...} of `cfg` in bf16, N(0, 0.02) matrices and unit norm scales, made on the
    default device leaf by leaf (no f32 copy of the whole model)."""
    shapes = jax.eval_shape(Llama(cfg).init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    key = jax.random.key(seed)
    out = []
    for i, (path, s) in enumerate(leaves):
        name = jax.tree_util.keystr(path)
        if "norm" in name:
            out.append(jnp.ones(s.shape, jnp.bfloat16))
        else:
            k = jax.random.fold_in(key, i)
            out.append((0.02 * jax.random.normal(k, s.shape, jnp.float32)).astype(jnp.bfloat16))
    return jax.tree_util.tree_unflatten(treedef, out)


def w4a16_recipe(quantize_head: bool) -> Recipe:
    """The `w4a16` preset (int4 g128, bf16 scales); optionally the output head too."""
    base = jq.get_preset("w4a16")
    if not quantize_head:
        return base
    ignore = tuple(p for p in DEFAULT_IGNORE if "lm_head" not in p)
    rule = dataclasses.replace(base.rules[0], targets=DEFAULT_TARGETS + (r"re:(^|/)lm_head/",))
    return Recipe((rule,), ignore=ignore, name="w4a16+head")


def param_bytes(tree: Any) -> int:
    total = 0
    for leaf in jax.tree_util.tree_leaves(tree, is_leaf=jq.is_qarray):
        total += leaf.nbytes if jq.is_qarray(leaf) else leaf.size * leaf.dtype.itemsize
    return int(total)


def time_decode(model: Llama, params: Any, batch: int, backend: str, *, steps: int,
                profile: bool = False) -> tuple[float, list[str], dict]:
    """(median seconds per decode step, dispatch paths the quantized layers took, profile) for
    `batch` sequences; profile (when asked, on GPU): summed kernel time per step and the
    kernels that take most of it."""
    cache = model.init_cache(batch, 3 * steps + 16, jnp.bfloat16)

    def step(p, tok, cache):
        logits, cache = model.apply(p, tok, cache=cache)
        return jnp.argmax(logits[:, -1], -1).astype(jnp.int32)[:, None], cache

    with jq.intercept(backend=backend, report=True) as rep:  # active while tracing
        run = jax.jit(step, donate_argnums=(2,))
        tok, cache = run(params, jnp.ones((batch, 1), jnp.int32), cache)  # compile
    paths = sorted({path for _, _, path in rep.rows})
    jax.block_until_ready(tok)
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(steps):
            tok, cache = run(params, tok, cache)
        jax.block_until_ready(tok)
        ts.append((time.perf_counter() - t0) / steps)
    prof: dict = {}
    if profile:
        state = [tok, cache]

        def one():
            state[0], state[1] = run(params, state[0], state[1])
            return state[0]

        total, per = device_us(one, iters=5)
        top = {k[:60]: round(v, 1) for k, v in list(per.items())[:5]}
        prof = dict(kernel_us_per_step=total, top_kernels_us=top)
    return statistics.median(ts), paths, prof


def check_logits(cfg: LlamaConfig, qparams: Any, layers: int = 2) -> float:
    """Relative error of the Pallas-path logits against XLA dequantize-then-dot on the same
    weights, through the first `layers` blocks (deeper random-weight stacks amplify the bf16
    rounding differences of every layer chaotically)."""
    cfg = dataclasses.replace(cfg, n_layers=min(layers, cfg.n_layers))
    inner = {k: v for k, v in qparams["params"].items()
             if not k.startswith("layers_") or int(k.split("_")[1]) < cfg.n_layers}
    model, params = Llama(cfg), {"params": inner}
    tok = jnp.arange(8, dtype=jnp.int32)[None] % cfg.vocab_size
    outs = []
    for backend in ("xla", "auto"):
        with jq.intercept(backend=backend):
            outs.append(np.asarray(jax.jit(lambda p: model.apply(p, tok)[0])(params), np.float64))
    return H.rel_err(outs[1], outs[0])


# name -> (fused projections, recipe (None: bf16 weights), dispatch backend, GPU "nk" layout:
# the Mosaic GPU kernel instead of the Pallas-Triton one)
VARIANTS: dict[str, tuple[bool, Recipe | None, str, bool]] = {
    "bf16": (False, None, "xla", False),
    "bf16 fused": (True, None, "xla", False),
    "w4a16": (False, w4a16_recipe(False), "auto", False),
    "w4a16 fused": (True, w4a16_recipe(False), "auto", False),
    "w4a16+head fused": (True, w4a16_recipe(True), "auto", False),
    "w4a16 mosaic": (False, w4a16_recipe(False), "auto", True),
    "w4a16 mosaic fused": (True, w4a16_recipe(False), "auto", True),
    "w4a16+head mosaic fused": (True, w4a16_recipe(True), "auto", True),
    "w4a16 (XLA dequant)": (False, w4a16_recipe(False), "xla", False),
}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"comma-separated, from: {', '.join(VARIANTS)}")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--small", action="store_true", help="a tiny model (CPU smoke test)")
    ap.add_argument("--xla-int4-batches", default="1",
                    help="batches at which the XLA dequantize+dot W4A16 path is timed")
    ap.add_argument("--profile", action="store_true",
                    help="also sum GPU kernel time per step (profiler trace) at each batch")
    args = ap.parse_args(argv)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    cfg = SMALL if args.small else dataclasses.replace(LLAMA3_8B, n_layers=args.layers)
    batches = [int(b) for b in args.batches.split(",")]
    xla_batches = {int(b) for b in args.xla_int4_batches.split(",") if b}
    dev = jax.devices()[0]
    floats = {False: random_params(cfg)}
    if any(VARIANTS[n][0] for n in names):
        floats[True] = fuse_projections(floats[False])
    models = {f: Llama(dataclasses.replace(cfg, fused_projections=f)) for f in floats}
    q0 = jq.quantize(floats[False], w4a16_recipe(False))
    err = check_logits(cfg, q0)
    err_nk = check_logits(cfg, to_gpu_layout(q0))
    del q0
    print(f"device {dev.device_kind}, jax {jax.__version__}; {cfg.n_layers} layers, d={cfg.d_model}"
          f", ffn={cfg.ffn_dim}; W4A16 logits vs XLA dequant (2 blocks): rel err {err:.2e} "
          f"(canonical layout, Triton), {err_nk:.2e} (nk layout, Mosaic GPU)", flush=True)
    rows: list[dict] = []
    meta = dict(kernel="_meta", device=dev.device_kind, jax=jax.__version__,
                date=datetime.date.today().isoformat(),
                config=dataclasses.asdict(cfg) | {"dtype": "bfloat16"}, steps=args.steps,
                logits_rel_err=err, logits_rel_err_nk=err_nk,
                xla_flags=os.environ.get("XLA_FLAGS", ""),
                method="jitted one-token decode step (cache donated), warm-up, 3 runs of `steps` "
                       "dependent steps, median seconds per step; x bf16 against the unfused "
                       "bf16 model at the same batch")
    root = os.environ.get("OUT") or os.path.join(os.path.dirname(__file__), "results")
    kind = str(dev.device_kind).replace(" ", "_")
    tag = os.environ.get("DECODE_TAG", "")
    path = os.path.join(root, f"{meta['date']}-{kind}-decode{tag}.json")

    def save() -> None:  # after every row, so that a run stopped early keeps what it measured
        H.write_json(path, [meta] + rows)

    base: dict[int, float] = {}
    print("variant | batch | ms/step | tok/s | x bf16 | weight GB | paths | kernel ms/step",
          flush=True)
    for name in names:
        fused, recipe, backend, nk = VARIANTS[name]
        params = floats[fused] if recipe is None else jq.quantize(floats[fused], recipe)
        if nk:
            params = to_gpu_layout(params)
        for b in batches:
            if "XLA" in name and b not in xla_batches:
                continue
            s, paths, prof = time_decode(models[fused], params, b, backend, steps=args.steps,
                                         profile=args.profile)
            if name == "bf16":
                base[b] = s
            row = dict(variant=name, batch=b, ms_per_step=s * 1e3, tok_per_s=b / s,
                       vs_bf16=base.get(b, float("nan")) / s, weight_bytes=param_bytes(params),
                       paths=paths, **prof)
            rows.append(row)
            kms = prof.get("kernel_us_per_step", float("nan")) / 1e3
            print(f"{name} | {b} | {s * 1e3:.2f} | {b / s:.1f} | {row['vs_bf16']:.2f} | "
                  f"{row['weight_bytes'] / 1e9:.2f} | {paths} | {kms:.2f}", flush=True)
            if prof:
                print(f"    top kernels (us/step): {prof['top_kernels_us']}", flush=True)
            save()
        del params
    save()
    return rows


if __name__ == "__main__":
    main()
