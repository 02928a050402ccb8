"""`jaxquant` command-line tool: quantize, eval, generate, presets."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from jaxquant.cli import kv_cache_option
from jaxquant.cli import inspect, qat
from jaxquant.errors import JaxquantError

console = Console(stderr=True)


def _out() -> Console:
    """Console for tables: at least 150 columns wide even when stdout is not a terminal."""
    c = Console()
    return c if c.is_terminal else Console(width=150)


def _model_args(p: argparse.ArgumentParser, recipe_help: str) -> None:
    p.add_argument("--model", default="smollm2-135m",
                   help="a model name (smollm2-135m), a .gguf file, or a saved jaxquant "
                        "checkpoint directory (default: smollm2-135m)")
    p.add_argument("--recipe", default=None, help=recipe_help)
    p.add_argument("--method", choices=("rtn", "gptq", "awq", "smoothquant"), default=None,
                   help="apply this method to every rule of the recipe (e.g. --recipe w4a16 "
                        "--method gptq)")
    p.add_argument("--bits", type=int, choices=(2, 3, 4, 8), default=None,
                   help="set the bit width of the recipe's integer weight format (int4 -> int3)")
    p.add_argument("--calib-text", default=None,
                   help="calibration text file (default: the bundled Persuasion slice, which "
                        "never overlaps the evaluation text)")
    p.add_argument("--calib-tokens", type=int, default=16384,
                   help="calibration tokens for GPTQ/AWQ/SmoothQuant (default 16384)")


def _eval_args(p: argparse.ArgumentParser, default_tokens: int) -> None:
    p.add_argument("--text", default=None,
                   help="plain UTF-8 text file to evaluate on (default: the bundled Austen slice)")
    p.add_argument("--max-tokens", type=int, default=default_tokens,
                   help=f"evaluate at most this many tokens of the text (default {default_tokens};"
                        " 0 for all)")
    p.add_argument("--seq-len", type=int, default=512, help="window length (default 512)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward (default 4)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxquant",
        description="Quantize, evaluate and run Flax models (jaxquant).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quantize", help="load, quantize, evaluate, save (Orbax), print a summary",
                       description="Load a model, quantize it with a recipe (calibrating where "
                                   "the recipe needs it), evaluate perplexity of the original and "
                                   "quantized weights on the same text, show generations side by "
                                   "side, save the quantized model and print the summary table.")
    _model_args(q, "preset name (see `jaxquant presets`) or a YAML/JSON recipe file "
                   "(default: w4a16)")
    q.add_argument("--out", required=True, help="output directory for the quantized checkpoint")
    q.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    q.add_argument("--format", choices=("orbax", "compressed-tensors"), default="orbax",
                   help="checkpoint format of --out (default orbax)")
    q.add_argument("--no-eval", action="store_true", help="skip perplexity and generations")
    q.add_argument("--verbose", action="store_true", help="one summary row per parameter")
    _eval_args(q, 8192)
    q.add_argument("--json", action="store_true", help="print one JSON object instead of tables")

    e = sub.add_parser("eval", help="perplexity of original and quantized weights",
                       description="Evaluate perplexity on a text (bundled slice by default) for "
                                   "the original weights and, with --recipe or a saved "
                                   "checkpoint as --model, the quantized ones, in the same run.")
    _model_args(e, "quantize with this preset/recipe file before evaluating")
    _eval_args(e, 16384)
    kv_cache_option.add_argument(e)
    e.add_argument("--json", action="store_true", help="print one JSON object")

    g = sub.add_parser("generate", help="generate text with a (quantized) model",
                       description="Generate a continuation of --prompt with KV-cache decoding.")
    _model_args(g, "quantize with this preset/recipe file first")
    g.add_argument("--prompt", required=True, help="the prompt text")
    g.add_argument("--max-new-tokens", type=int, default=48, help="default 48")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    kv_cache_option.add_argument(g)
    g.add_argument("--json", action="store_true", help="print one JSON object")

    s = sub.add_parser("sensitivity", help="rank layers by quantization cost, build a "
                       "mixed-precision recipe under a byte budget",
                       description="Quantize one group of layers at a time with --recipe (the "
                                   "rest in float), measure the perplexity cost of each on the "
                                   "calibration text, print the ranked ladder, and write a "
                                   "recipe that keeps the most sensitive groups in --high "
                                   "precision within the budget; then compare it with uniform "
                                   "low and high precision on the evaluation text.")
    _model_args(s, "the low-precision preset or recipe file (default: w4a16)")
    s.add_argument("--high", default="w8a16", help="high-precision preset (default w8a16)")
    s.add_argument("--granularity", choices=("type", "block", "layer"), default="type",
                   help="group layers by type across blocks (default), by block, or singly")
    budget = s.add_mutually_exclusive_group()
    budget.add_argument("--budget-bytes", type=int, default=None,
                        help="total parameter bytes allowed")
    budget.add_argument("--bits-per-param", type=float, default=None,
                        help="average bits per quantized parameter allowed (default 5.0)")
    s.add_argument("--out-recipe", default=None, help="write the mixed recipe here (.yaml/.json)")
    s.add_argument("--plot", default=None, help="save the ladder as a PNG (needs matplotlib)")
    s.add_argument("--sens-tokens", type=int, default=2048,
                   help="calibration tokens per sensitivity measurement (default 2048)")
    _eval_args(s, 8192)
    s.add_argument("--json", action="store_true", help="print one JSON object")

    sub.add_parser("presets", help="list the preset recipes")
    inspect.add_parser(sub)
    qat.add_parser(sub)
    return parser


def _quant_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    if args.calib_tokens <= 0:
        raise JaxquantError(f"--calib-tokens={args.calib_tokens} must be positive")
    if (args.method or args.bits) and args.recipe is None and args.command != "quantize":
        raise JaxquantError("--method/--bits modify a recipe: give --recipe too")
    return {"method": args.method, "bits": args.bits, "calib_text": args.calib_text,
            "calib_tokens": args.calib_tokens}


def _max_tokens(args: argparse.Namespace) -> int | None:
    if args.max_tokens < 0:
        raise JaxquantError(f"--max-tokens={args.max_tokens} must be >= 0")
    return args.max_tokens or None


def _metric_table(title: str, rows: list[tuple[str, str, str, str]]) -> Table:
    t = Table(title=title)
    for c in ("", "original", "quantized", "change"):
        t.add_column(c, justify="right" if c else "left")
    for r in rows:
        t.add_row(*r)
    return t


def _eval_pair(loaded, base_params, args, kv=None) -> dict[str, Any]:
    """Perplexity of the original and (if quantized) the quantized params on the same windows;
    a KV cache format `kv` applies to the quantized side (float weights too without a recipe)."""
    from jaxquant.cli import pipeline
    from jaxquant.evaluation import read_text

    text, label = read_text(args.text)
    tokens = loaded.model.tokenizer.encode(text)
    kw = dict(seq_len=args.seq_len, batch_size=args.batch_size, max_tokens=_max_tokens(args))
    orig = pipeline.evaluate(loaded.model, base_params, tokens, desc="original", **kw)
    out: dict[str, Any] = {
        "text": label, "text_tokens": len(tokens), "tokens_evaluated": orig.n_tokens,
        "seq_len": args.seq_len,
        "original": {"perplexity": orig.ppl, "nll": orig.nll,
                     "tokens_per_second": orig.tokens_per_second,
                     "param_bytes": pipeline.param_bytes(base_params)},
    }
    if loaded.recipe is not None or kv is not None:
        quant = pipeline.evaluate(loaded.model, loaded.params, tokens, desc="quantized", kv=kv,
                                  **kw)
        out["quantized"] = {"perplexity": quant.ppl, "nll": quant.nll,
                            "tokens_per_second": quant.tokens_per_second,
                            "param_bytes": pipeline.param_bytes(loaded.params)}
        out["perplexity_delta"] = quant.ppl - orig.ppl
        out["perplexity_delta_percent"] = 100 * (quant.ppl - orig.ppl) / orig.ppl
    return out


def _eval_rows(ev: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    o, q = ev["original"], ev.get("quantized")
    rows = [("perplexity", f"{o['perplexity']:.3f}", f"{q['perplexity']:.3f}" if q else "-",
             f"{ev['perplexity_delta']:+.3f} ({ev['perplexity_delta_percent']:+.2f}%)" if q else "-"),
            ("parameter bytes", f"{o['param_bytes']:,}", f"{q['param_bytes']:,}" if q else "-",
             f"{o['param_bytes'] / q['param_bytes']:.2f}x smaller" if q else "-"),
            ("forward tokens/s", f"{o['tokens_per_second']:.0f}",
             f"{q['tokens_per_second']:.0f}" if q else "-", "")]
    return rows


def cmd_quantize(args: argparse.Namespace) -> dict[str, Any]:
    from pathlib import Path

    import jaxquant as jq
    from jaxquant.cli import pipeline
    from jaxquant.interop import formats

    out_dir = Path(args.out)
    if out_dir.exists() and not args.overwrite:
        raise JaxquantError(f"output directory {str(out_dir)!r} exists; pass --overwrite "
                            "or choose another --out")
    if pipeline.is_checkpoint(args.model):
        raise JaxquantError(f"{args.model} is already a quantized checkpoint; quantize the base "
                            "model instead")
    loaded = pipeline.load(args.model, args.recipe or "w4a16", **_quant_kwargs(args))
    result: dict[str, Any] = {
        "command": "quantize", "model": args.model, "source": str(loaded.model.path),
        "recipe": loaded.recipe.name, "quantize_seconds": loaded.quantize_seconds,
        "calibration": {k: v for k, v in loaded.calibration.items() if k != "layers"},
    }
    summ = jq.summary(loaded.params, reference=loaded.model.params)
    result["summary"] = summ.to_dict()
    if not args.no_eval:
        result["eval"] = _eval_pair(loaded, loaded.model.params, args)
        result["generations"] = [
            {"prompt": p,
             "original": pipeline.complete(loaded.model, loaded.model.params, p, max_new_tokens=24),
             "quantized": pipeline.complete(loaded.model, loaded.params, p, max_new_tokens=24)}
            for p in pipeline.DEFAULT_PROMPTS
        ]
    start = time.perf_counter()
    formats.save(out_dir, loaded.params, loaded.recipe, format=args.format,
                 base_model=args.model, overwrite=args.overwrite)
    result["save_seconds"] = time.perf_counter() - start
    result["out"] = str(out_dir.absolute())
    if not args.json:
        out = _out()
        out.print((summ if args.verbose else summ.grouped()).table())
        if "eval" in result:
            ev = result["eval"]
            out.print(_metric_table(
                f"{args.model}, recipe {loaded.recipe.name}: {ev['tokens_evaluated']:,} tokens "
                f"of {ev['text']}", _eval_rows(ev)))
            gen = Table(title="greedy generations", show_lines=True)
            for c in ("prompt", "original", "quantized"):
                gen.add_column(c)
            for g in result["generations"]:
                gen.add_row(g["prompt"], g["original"], g["quantized"])
            out.print(gen)
        cal = loaded.calibration
        if cal:
            out.print(f"calibrated on {cal.get('tokens', cal.get('activation_tokens'))} tokens of "
                      f"{cal['text']}")
        out.print(f"quantized in {loaded.quantize_seconds:.1f}s; saved to {result['out']}")
    return result


def cmd_eval(args: argparse.Namespace) -> dict[str, Any]:
    from jaxquant.cli import pipeline

    loaded = pipeline.load(args.model, args.recipe, **_quant_kwargs(args))
    kv = kv_cache_option.resolve(args, loaded.recipe)
    ev = _eval_pair(loaded, loaded.model.params, args, kv)
    result = {"command": "eval", "model": args.model,
              "recipe": loaded.recipe.name if loaded.recipe else None,
              "kv_cache": kv_cache_option.report(loaded.model.config, kv),
              "quantize_seconds": loaded.quantize_seconds,
              "calibration": {k: v for k, v in loaded.calibration.items() if k != "layers"},
              **ev}
    if not args.json:
        _out().print(_metric_table(f"{args.model}: {ev['tokens_evaluated']:,} tokens of "
                                      f"{ev['text']}", _eval_rows(ev)))
    return result


def cmd_generate(args: argparse.Namespace) -> dict[str, Any]:
    from jaxquant.cli import pipeline
    from jaxquant.models.generate import Sampling

    if args.max_new_tokens <= 0:
        raise JaxquantError(f"--max-new-tokens={args.max_new_tokens} must be positive")
    loaded = pipeline.load(args.model, args.recipe, **_quant_kwargs(args))
    kv = kv_cache_option.resolve(args, loaded.recipe)
    start = time.perf_counter()
    text = pipeline.complete(loaded.model, loaded.params, args.prompt,
                             max_new_tokens=args.max_new_tokens,
                             sampling=Sampling(args.temperature, args.top_p), seed=args.seed,
                             kv=kv)
    result = {"command": "generate", "model": args.model,
              "recipe": loaded.recipe.name if loaded.recipe else None,
              "kv_cache": kv_cache_option.report(loaded.model.config, kv),
              "prompt": args.prompt, "completion": text,
              "seconds": time.perf_counter() - start}
    if not args.json:
        _out().print(f"[bold]{args.prompt}[/bold]{text}")
    return result


def cmd_presets(args: argparse.Namespace) -> dict[str, Any]:
    from jaxquant.recipes import get_preset, preset_names

    t = Table(title="presets")
    for c in ("name", "weights", "granularity", "activations", "method"):
        t.add_column(c)
    for name in preset_names():
        rule = get_preset(name).rules[0]
        w, a = rule.weight, rule.activation
        gran = w.resolved_granularity + (f" {w.group_size}" if w.group_size else "")
        act = f"{a.format} per {a.granularity}, {'dynamic' if a.dynamic else 'static'}" if a else "-"
        t.add_row(name, w.format, gran, act, rule.method)
    _out().print(t)
    return {}


def cmd_sensitivity(args: argparse.Namespace) -> dict[str, Any]:
    import jaxquant as jq
    from jaxquant.cli import pipeline
    from jaxquant.evaluation import read_text
    from jaxquant.evaluation.perplexity import perplexity
    from jaxquant.methods.sensitivity import mixed_recipe, sensitivity
    from jaxquant.recipes.io import resolve_recipe, save_recipe
    from jaxquant.tree_paths import flatten

    if args.plot and importlib.util.find_spec("matplotlib") is None:  # before, not after, the work
        raise JaxquantError("--plot needs matplotlib: pip install matplotlib")
    model = pipeline.cached_model(args.model)
    low = pipeline.with_overrides(resolve_recipe(args.recipe or "w4a16"), args.method, args.bits)
    high = resolve_recipe(args.high)
    calib, calib_label = pipeline.calibration_windows(
        model, text=args.calib_text, tokens=args.sens_tokens, seq_len=args.seq_len)
    fn = pipeline.logits_fn(model)

    def cost(params: Any) -> float:
        return perplexity(fn, params, calib.reshape(-1), seq_len=args.seq_len,
                          batch_size=args.batch_size, progress=False).ppl

    def quantize(params: Any, recipe: Any) -> Any:
        return pipeline.quantize_model(model, args.model, recipe, progress=False)[0]

    base, costs = sensitivity(model.params, low, high, cost, granularity=args.granularity,
                              quantize=quantize)
    targeted = {p for c in costs for p in c.paths}
    leaves = flatten(model.params)[0]
    n_targeted = sum(int(leaf.size) for p, leaf in leaves if p in targeted)
    other = sum(int(leaf.nbytes) for p, leaf in leaves if p not in targeted)
    budget = args.budget_bytes
    if budget is None:
        budget = other + int((args.bits_per_param or 5.0) / 8 * n_targeted)
    recipe, mixed_bytes, upgraded = mixed_recipe(low, high, costs, budget, other)
    if args.out_recipe:
        save_recipe(recipe, args.out_recipe)
    text, label = read_text(args.text)
    tokens = model.tokenizer.encode(text)
    kw = dict(seq_len=args.seq_len, batch_size=args.batch_size, max_tokens=_max_tokens(args))
    compare = {}
    for name, r in (("original", None), (low.name, low), (high.name, high), (recipe.name, recipe)):
        params = model.params if r is None else quantize(model.params, r)
        res = pipeline.evaluate(model, params, tokens, desc=name, **kw)
        compare[name] = {"perplexity": res.ppl, "param_bytes": pipeline.param_bytes(params)}
    result = {
        "command": "sensitivity", "model": args.model, "low": low.name, "high": high.name,
        "granularity": args.granularity, "calibration": {"text": calib_label,
                                                          "tokens": int(calib.size)},
        "float_calib_perplexity": base,
        "ladder": [{"group": c.group, "perplexity": c.perplexity, "delta": c.delta,
                    "low_bytes": c.low_bytes, "high_bytes": c.high_bytes} for c in costs],
        "budget_bytes": budget, "mixed_bytes": mixed_bytes, "upgraded": upgraded,
        "recipe_file": args.out_recipe, "evaluation": {"text": label, **compare},
    }
    if args.plot:
        _plot_ladder(costs, args.plot, f"{args.model}: {low.name} one group at a time")
    if not args.json:
        out = _out()
        t = Table(title=f"sensitivity ladder ({low.name}, {calib.size:,} tokens of {calib_label})")
        for c in ("group", "perplexity", "cost", "kept in " + high.name):
            t.add_column(c)
        for c in costs:
            t.add_row(c.group, f"{c.perplexity:.3f}", f"{c.delta:+.3f}",
                      "yes" if c.group in upgraded else "")
        out.print(t)
        t2 = Table(title=f"{label}: uniform vs mixed (budget {budget:,} bytes)")
        for c in ("recipe", "perplexity", "parameter bytes"):
            t2.add_column(c)
        for name, v in compare.items():
            t2.add_row(name, f"{v['perplexity']:.3f}", f"{v['param_bytes']:,}")
        out.print(t2)
    return result


def _plot_ladder(costs: Any, path: str, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise JaxquantError("--plot needs matplotlib: pip install matplotlib") from None
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(costs) + 1.5))
    names = [c.group.replace("\\d+", "*").replace("\\", "") for c in costs][::-1]
    ax.barh(names, [c.delta for c in costs][::-1])
    ax.set_xlabel("perplexity increase")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


COMMANDS = {"quantize": cmd_quantize, "eval": cmd_eval, "generate": cmd_generate,
            "sensitivity": cmd_sensitivity, "presets": cmd_presets, "inspect": inspect.run,
            "qat": qat.run}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = COMMANDS[args.command](args)
    except JaxquantError as e:
        console.print(f"[red]error:[/red] {e}")
        return 2
    if getattr(args, "json", False):
        print(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
