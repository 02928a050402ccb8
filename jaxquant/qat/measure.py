"""Measure QAT and QLoRA on a model and the bundled texts; print a table, write JSON.

    python -m jaxquant.qat.measure --out jaxquant/evaluation/results/DATE-DEVICE-smollm2-qat.json
        [--bits 3 --group 128] [--steps 20 --batch-size 2 --seq-len 256] [--eval-tokens 4096]
        [--qlora-steps 15] [--calib-tokens 4096] [--learn-scales]

Training text: the bundled calibration slice (Persuasion); evaluation: the bundled evaluation
slice (Emma), never overlapping. Rows: the original model; PTQ round to nearest and GPTQ at
int{bits} g{group}; QAT from RTN after --steps optimizer steps (straight-through weights, scales
recomputed every step; --learn-scales: LSQ learned scales); the same steps of a float fine-tune
(what the domain adaptation alone buys). QLoRA: NF4 (double-quantized) base with bf16 adapters,
loss curve, perplexity of base / base + adapters / merged and re-quantized, and the training
state bytes (parameters + gradients + Adam state) against a bf16 full fine-tune of the model.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import time
from typing import Any

import jax
import jax.numpy as jnp
import optax

import jaxquant as jq
from jaxquant.cli import pipeline
from jaxquant.evaluation import read_text
from jaxquant.evaluation.text import CALIB_TEXT
from jaxquant.models import load_model
from jaxquant.qat.forward import qat_apply
from jaxquant.qat.lora import LoraConfig, init_adapters, lora_apply, merge_adapters
from jaxquant.qat.optim import qat_optimizer
from jaxquant.qat.params import convert, prepare_qat
from jaxquant.qat.train import lm_loss, make_step, token_batches, train, tree_bytes
from jaxquant.recipes import Recipe, Rule, WeightScheme
from jaxquant.recipes.recipe import DEFAULT_TARGETS

STAGES = ("ptq", "qat", "float", "qlora", "gptq")
ORIGINAL = "original (f32)"


def int_recipe(bits: int, group: int, method: str = "rtn") -> Recipe:
    """int{bits}, groups of `group` along the contraction axis (ragged last group), f32 scales."""
    w = WeightScheme(f"int{bits}", "group", group, ragged_groups=True)
    return Recipe((Rule(DEFAULT_TARGETS, w, method=method),), name=f"int{bits}-g{group}-{method}")


def _train_qat(model, params, recipe, args, learn_scales: bool) -> tuple[Any, list[float], float]:
    qat = prepare_qat(params, recipe, learn_scales=learn_scales)
    opt = qat_optimizer(args.lr, args.scale_lr if learn_scales else None)
    step = make_step(lambda t, tok: lm_loss(qat_apply(model.module, t, tok)[0], tok), opt)
    start = time.perf_counter()
    qat, _, losses = train(step, qat, opt.init(qat), _batches(model, args), args.steps,
                           desc="qat-lsq" if learn_scales else "qat")
    return convert(qat), losses, time.perf_counter() - start


def _batches(model, args):
    text, _ = read_text(None, default=CALIB_TEXT)
    return token_batches(model.tokenizer.encode(text), args.seq_len, args.batch_size, args.seed)


def _train_float(model, params, args) -> tuple[Any, list[float], float]:
    opt = optax.adam(args.lr)
    step = make_step(lambda p, tok: lm_loss(model.module.apply(p, tok)[0], tok), opt)
    start = time.perf_counter()
    params, _, losses = train(step, params, opt.init(params), _batches(model, args), args.steps,
                              desc="float")
    return params, losses, time.perf_counter() - start


def _qlora(model, args, evaluate) -> dict[str, Any]:
    base = jq.quantize(model.params, "nf4")
    cfg = LoraConfig(rank=args.lora_rank, alpha=args.lora_alpha)
    adapters = init_adapters(jax.random.key(args.seed), base, cfg)
    opt = optax.adam(args.lora_lr)

    def loss_fn(a: Any, tok: Any, b: Any) -> Any:
        return lm_loss(lora_apply(model.module, b, a, cfg, tok)[0], tok)

    step = make_step(loss_fn, opt, base)
    start = time.perf_counter()
    adapters, opt_state, losses = train(step, adapters, opt.init(adapters), _batches(model, args),
                                        args.qlora_steps, desc="qlora")
    seconds = time.perf_counter() - start
    grads = jax.eval_shape(jax.grad(loss_fn), adapters, jnp.zeros((1, 8), jnp.int32), base)
    qlora_state = {"base": tree_bytes(base), "adapters": tree_bytes(adapters),
                   "gradients": tree_bytes(grads), "adam": tree_bytes(opt_state)}
    # bf16 full fine-tune of the same model: one real step, then the same accounting
    bf16 = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), model.params)
    fopt = optax.adam(args.lr)
    full_loss = lambda p, tok: lm_loss(model.module.apply(p, tok)[0], tok)  # noqa: E731
    fstep = make_step(full_loss, fopt)
    bf16, fstate, _ = train(fstep, bf16, fopt.init(bf16), _batches(model, args), 1, progress=False)
    fgrads = jax.eval_shape(jax.grad(full_loss), bf16, jnp.zeros((1, 8), jnp.int32))
    full_state = {"params": tree_bytes(bf16), "gradients": tree_bytes(fgrads),
                  "adam": tree_bytes(fstate)}
    apply_fn = lambda p, tok: lora_apply(model.module, base, p, cfg, tok)[0]  # noqa: E731
    return {
        "rank": cfg.rank, "alpha": cfg.alpha, "steps": args.qlora_steps, "lr": args.lora_lr,
        "adapted_layers": len(adapters), "train_seconds": seconds, "losses": losses,
        "perplexity": {"nf4_base": evaluate(base), "nf4_base_plus_adapters":
                       evaluate(adapters, apply_fn=apply_fn),
                       "merged_requantized_nf4": evaluate(merge_adapters(base, adapters, cfg,
                                                                         "nf4"))},
        "state_bytes": {"qlora": qlora_state, "qlora_total": sum(qlora_state.values()),
                        "bf16_full_finetune": full_state,
                        "bf16_full_finetune_total": sum(full_state.values())},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--bits", type=int, default=3)
    p.add_argument("--group", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="QAT and float fine-tune steps")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-5, help="Adam rate of weights")
    p.add_argument("--learn-scales", action="store_true", help="QAT with LSQ learned scales")
    p.add_argument("--scale-lr", type=float, default=1e-3, help="Adam rate of LSQ log-scales")
    p.add_argument("--eval-tokens", type=int, default=4096, help="0: the whole eval slice")
    p.add_argument("--eval-seq-len", type=int, default=512)
    p.add_argument("--calib-tokens", type=int, default=4096, help="GPTQ calibration tokens")
    p.add_argument("--qlora-steps", type=int, default=15, help="0: skip QLoRA")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--lora-alpha", type=float, default=32.0)
    p.add_argument("--lora-lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stages", default=",".join(STAGES),
                   help="comma list of stages to run (default all); rows of an existing --out "
                        "file are kept, so stages can run in separate processes")
    p.add_argument("--out", default=None, help="write JSON here (merged with an existing file)")
    args = p.parse_args()

    wall = time.perf_counter()
    model = load_model(args.model)
    text, label = read_text(None)
    eval_ids = model.tokenizer.encode(text)

    def evaluate(params: Any, apply_fn: Any = None, desc: str = "eval") -> float:
        from jaxquant.evaluation.perplexity import perplexity

        fn = apply_fn or pipeline.logits_fn(model)
        return perplexity(fn, params, eval_ids, seq_len=args.eval_seq_len, batch_size=2,
                          max_tokens=args.eval_tokens or None, desc=desc).ppl

    stages = set(args.stages.split(","))
    unknown = stages - set(STAGES)
    if unknown:
        raise SystemExit(f"unknown --stages {sorted(unknown)}; choose from {STAGES}")
    previous = json.load(open(args.out)) if args.out and os.path.exists(args.out) else {}
    rows: list[dict[str, Any]] = previous.get("rows", [])
    curves: dict[str, list[float]] = previous.get("loss_curves", {})
    qlora = previous.get("qlora")
    device = jax.devices()[0].device_kind
    tokens_per_step = args.batch_size * args.seq_len

    def add(row: dict[str, Any]) -> None:
        """Record a row (replacing one of the same name) and save: every stage is kept even if
        a later one fails or runs in another process (--stages)."""
        rows[:] = [r for r in rows if r["name"] != row["name"]] + [row]
        base = next((r for r in rows if r["name"] == ORIGINAL), None)
        rtn = next((r for r in rows if r["name"].startswith("PTQ RTN")), None)
        for r in rows:
            if base and rtn and rtn["perplexity"] != base["perplexity"]:
                r["gap_closed_vs_rtn"] = ((rtn["perplexity"] - r["perplexity"])
                                          / (rtn["perplexity"] - base["perplexity"]))
        save()

    def save() -> None:
        if args.out:
            meta = {"date": datetime.date.today().isoformat(), "model": args.model,
                    "device": device, "machine": platform.machine(), "jax": jax.__version__,
                    "eval_text": label, "train_text": f"bundled {CALIB_TEXT}",
                    "settings": vars(args), "tokens_per_step": tokens_per_step,
                    "wall_seconds": time.perf_counter() - wall,
                    "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                    * 1024}
            with open(args.out, "w") as f:
                json.dump({"meta": meta, "rows": rows, "loss_curves": curves, "qlora": qlora},
                          f, indent=1)

    rtn = int_recipe(args.bits, args.group)
    if "ptq" in stages:
        add({"name": ORIGINAL, "perplexity": evaluate(model.params)})
        add({"name": f"PTQ RTN {rtn.name}", "perplexity": evaluate(jq.quantize(model.params, rtn))})
    if "qat" in stages:
        qparams, losses, secs = _train_qat(model, model.params, rtn, args, args.learn_scales)
        name = f"QAT {'LSQ scales' if args.learn_scales else 'STE'} ({args.steps} steps)"
        curves[name] = losses
        add({"name": name, "perplexity": evaluate(qparams), "seconds": secs,
             "param_bytes": pipeline.param_bytes(qparams)})
        del qparams
    if "float" in stages:
        ft, losses, secs = _train_float(model, model.params, args)
        curves["float fine-tune"] = losses
        add({"name": f"float fine-tune ({args.steps} steps; reference, not quantized)",
             "perplexity": evaluate(ft), "seconds": secs})
        del ft
    if "qlora" in stages:
        qlora = _qlora(model, args, evaluate)
        save()
    if "gptq" in stages:
        gptq_params, gptq_s, _ = pipeline.quantize_model(
            model, args.model, int_recipe(args.bits, args.group, "gptq"),
            calib_tokens=args.calib_tokens, seq_len=args.eval_seq_len)
        add({"name": f"PTQ GPTQ ({args.calib_tokens} calibration tokens)",
             "perplexity": evaluate(gptq_params), "seconds": gptq_s})

    print(f"\n{args.model}, int{args.bits} g{args.group}; train: {args.steps} steps x "
          f"{tokens_per_step} tokens of bundled {CALIB_TEXT}; eval: {args.eval_tokens or 'all'} "
          f"tokens of {label}; {device}\n")
    print("| model | perplexity | share of the RTN gap closed |")
    print("|---|---|---|")
    for r in rows:
        closed = r.get("gap_closed_vs_rtn")
        print(f"| {r['name']} | {r['perplexity']:.3f} | "
              f"{'-' if closed is None else format(closed, '.0%')} |")
    if qlora:
        mb = lambda b: f"{b / 2**20:,.1f} MiB"  # noqa: E731
        sb = qlora["state_bytes"]
        print(f"\nQLoRA r{qlora['rank']}: loss {qlora['losses'][0]:.3f} -> "
              f"{qlora['losses'][-1]:.3f} in {qlora['steps']} steps; perplexity "
              + ", ".join(f"{k} {v:.3f}" for k, v in qlora["perplexity"].items()))
        print(f"training state: QLoRA {mb(sb['qlora_total'])} {sb['qlora']} vs bf16 full "
              f"fine-tune {mb(sb['bf16_full_finetune_total'])} {sb['bf16_full_finetune']}")


if __name__ == "__main__":
    main()
