"""`jaxquant qat`: quantization-aware fine-tuning (or QLoRA) on text, evaluation before and
after, and a saved quantized checkpoint that `jaxquant eval --model DIR` reads."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from jaxquant.errors import JaxquantError


def add_parser(sub: Any) -> None:
    q = sub.add_parser(
        "qat", help="quantization-aware fine-tuning (or --qlora), evaluate, save",
        description="Fine-tune a model quantization-aware on a text (the bundled calibration "
                    "slice by default, never the evaluation text) with a progress bar showing "
                    "the loss, evaluate perplexity before and after on the evaluation text, and "
                    "save the converted quantized model. --qlora trains LoRA adapters on a "
                    "frozen NF4 base instead and saves the merged, re-quantized model (adapters "
                    "also kept separately in DIR/adapters).")
    q.add_argument("--model", default="smollm2-135m", help="model name or .gguf file")
    q.add_argument("--recipe", default=None,
                   help="preset or recipe file (default: w4a16; with --qlora: nf4)")
    q.add_argument("--bits", type=int, choices=(2, 3, 4, 8), default=None,
                   help="set the recipe's integer weight width (e.g. --recipe w4a16 --bits 3)")
    q.add_argument("--steps", type=int, default=100, help="optimizer steps (default 100)")
    q.add_argument("--out", required=True, help="output directory of the quantized checkpoint")
    q.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    q.add_argument("--text", default=None,
                   help="training text file (default: the bundled Persuasion slice)")
    q.add_argument("--eval-text", default=None,
                   help="evaluation text file (default: the bundled Emma slice)")
    q.add_argument("--eval-tokens", type=int, default=4096,
                   help="evaluation tokens (default 4096, 0 for the whole text)")
    q.add_argument("--seq-len", type=int, default=256, help="training window (default 256)")
    q.add_argument("--batch-size", type=int, default=2, help="windows per step (default 2)")
    q.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate (default 5e-5; QLoRA 2e-4)")
    q.add_argument("--learn-scales", action="store_true",
                   help="learn the block scales too (LSQ), at --scale-lr")
    q.add_argument("--scale-lr", type=float, default=1e-3,
                   help="Adam rate of the log-scales with --learn-scales (default 1e-3)")
    q.add_argument("--qlora", action="store_true",
                   help="train LoRA adapters on a frozen NF4 (double-quantized) base")
    q.add_argument("--lora-rank", type=int, default=None, help="adapter rank (default 16)")
    q.add_argument("--lora-alpha", type=float, default=None, help="adapter alpha (default 32)")
    q.add_argument("--seed", type=int, default=0, help="data order and adapter init seed")
    q.add_argument("--json", action="store_true",
                   help="print one JSON object (with the loss curve) instead of tables")


def _train_qat(model, recipe, batches, args) -> tuple[Any, list[float]]:
    from jaxquant.qat.forward import qat_apply
    from jaxquant.qat.optim import qat_optimizer
    from jaxquant.qat.params import convert, prepare_qat
    from jaxquant.qat.train import lm_loss, make_step, train

    qat = prepare_qat(model.params, recipe, learn_scales=args.learn_scales)
    opt = qat_optimizer(args.lr or 5e-5, args.scale_lr if args.learn_scales else None)
    step = make_step(lambda t, tok: lm_loss(qat_apply(model.module, t, tok)[0], tok), opt)
    qat, _, losses = train(step, qat, opt.init(qat), batches, args.steps, desc="qat")
    return convert(qat), losses


def _train_qlora(model, recipe, batches, args) -> tuple[Any, Any, Any, list[float]]:
    import jax
    import optax

    import jaxquant as jq
    from jaxquant.qat.lora import (check_base, init_adapters, lora_apply, lora_config_from_recipe,
                                   merge_adapters)
    from jaxquant.qat.train import lm_loss, make_step, train

    base = jq.quantize(model.params, recipe)
    check_base(base)
    cfg = lora_config_from_recipe(recipe, args.lora_rank, args.lora_alpha)
    adapters = init_adapters(jax.random.key(args.seed), base, cfg)
    opt = optax.adam(args.lr or 2e-4)
    step = make_step(lambda a, tok, b: lm_loss(lora_apply(model.module, b, a, cfg, tok)[0], tok),
                     opt, base)
    adapters, _, losses = train(step, adapters, opt.init(adapters), batches, args.steps,
                                desc="qlora")
    return merge_adapters(base, adapters, cfg, recipe), base, (adapters, cfg), losses


def run(args: argparse.Namespace) -> dict[str, Any]:
    from jaxquant import checkpoint
    from jaxquant.cli import pipeline
    from jaxquant.evaluation import read_text
    from jaxquant.evaluation.text import CALIB_TEXT
    from jaxquant.qat.lora import lora_apply
    from jaxquant.qat.train import check_schedule, token_batches
    from jaxquant.recipes.io import resolve_recipe

    out_dir = Path(args.out)
    if out_dir.exists() and not args.overwrite:
        raise JaxquantError(f"output directory {str(out_dir)!r} exists; pass --overwrite or "
                            "choose another --out")
    if pipeline.is_checkpoint(args.model):
        raise JaxquantError(f"{args.model} is a quantized checkpoint; QAT trains the float "
                            "model: pass the base model (e.g. smollm2-135m)")
    if args.eval_tokens < 0:
        raise JaxquantError(f"--eval-tokens={args.eval_tokens} must be >= 0")
    check_schedule(1.0 if args.lr is None else args.lr, args.steps)
    if args.learn_scales and args.qlora:
        raise JaxquantError("--learn-scales applies to QAT, not to --qlora (its base is frozen)")
    recipe = pipeline.with_overrides(resolve_recipe(args.recipe or ("nf4" if args.qlora
                                                                    else "w4a16")), None, args.bits)
    calibrated = [r.method for r in recipe.rules if r.method != "rtn"]
    if calibrated:
        raise JaxquantError(f"recipe {recipe.name!r} uses method {calibrated[0]!r}; QAT and QLoRA "
                            "start from round to nearest: use a recipe with method 'rtn'")
    model = pipeline.cached_model(args.model)
    train_text, train_label = read_text(args.text, default=CALIB_TEXT)
    batches = token_batches(model.tokenizer.encode(train_text), args.seq_len, args.batch_size,
                            args.seed)
    eval_text, eval_label = read_text(args.eval_text)
    eval_ids = model.tokenizer.encode(eval_text)
    kw = dict(seq_len=512, batch_size=2, max_tokens=args.eval_tokens or None)
    original = pipeline.evaluate(model, model.params, eval_ids, desc="original", **kw)
    before_params = pipeline.quantize_model(model, args.model, recipe, progress=False)[0]
    before = pipeline.evaluate(model, before_params, eval_ids, desc="before (PTQ)", **kw)
    start = time.perf_counter()
    extra: dict[str, Any] = {}
    if args.qlora:
        qparams, base, (adapters, cfg), losses = _train_qlora(model, recipe, batches, args)
        fn = lambda a, tok: lora_apply(model.module, base, a, cfg, tok)[0]  # noqa: E731
        from jaxquant.evaluation.perplexity import perplexity

        sep = perplexity(fn, adapters, eval_ids, desc="base + adapters", **kw)
        extra = {"lora": {"rank": cfg.rank, "alpha": cfg.alpha, "layers": len(adapters),
                          "base_plus_adapters_perplexity": sep.ppl}}
    else:
        qparams, losses = _train_qat(model, recipe, batches, args)
    train_seconds = time.perf_counter() - start
    after = pipeline.evaluate(model, qparams, eval_ids, desc="after", **kw)
    info = {"model": args.model, "qat": {"mode": "qlora" if args.qlora else "qat",
                                         "steps": args.steps, "text": train_label}}
    checkpoint.save(out_dir, qparams, recipe, overwrite=args.overwrite, extra=info)
    if args.qlora:
        checkpoint.save(out_dir / "adapters", adapters, None, overwrite=True,
                        extra={"model": args.model, "lora_rank": cfg.rank,
                               "lora_alpha": cfg.alpha})
    result = {
        "command": "qat", "mode": info["qat"]["mode"], "model": args.model,
        "recipe": recipe.name, "steps": args.steps, "tokens_per_step": args.batch_size *
        args.seq_len, "train_text": train_label, "eval_text": eval_label,
        "tokens_evaluated": original.n_tokens, "train_seconds": train_seconds,
        "losses": losses,
        "perplexity": {"original": original.ppl, "before": before.ppl, "after": after.ppl},
        "param_bytes": pipeline.param_bytes(qparams), "out": str(out_dir.absolute()), **extra,
    }
    if not args.json:
        from rich.table import Table

        from jaxquant.cli import _out

        t = Table(title=f"{args.model}, {recipe.name} {result['mode']}: {args.steps} steps on "
                        f"{train_label}; {original.n_tokens:,} tokens of {eval_label}")
        for c in ("", "perplexity"):
            t.add_column(c)
        t.add_row("original (float)", f"{original.ppl:.3f}")
        t.add_row("before (round to nearest)", f"{before.ppl:.3f}")
        if args.qlora:
            t.add_row("base + adapters", f"{extra['lora']['base_plus_adapters_perplexity']:.3f}")
        t.add_row("after (converted, saved)", f"{after.ppl:.3f}")
        _out().print(t)
        _out().print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; saved to {result['out']}")
    return result
