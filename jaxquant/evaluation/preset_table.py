"""Perplexity and parameter bytes of a model under every preset, on the same windows of text.

    python -m jaxquant.evaluation.preset_table [--model smollm2-135m] [--max-tokens 0]
        [--presets w8a16,w4a16,...] [--out results.json]
Prints a markdown table and writes JSON rows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform

import jax

from jaxquant.cli import pipeline
from jaxquant.evaluation import read_text
from jaxquant.models import load_model
from jaxquant.recipes import get_preset

DEFAULT_PRESETS = ("w8a16", "w4a16", "w4a16-asym", "nf4", "fp8", "w8a8-int8", "mxfp4", "nvfp4")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--presets", default=",".join(DEFAULT_PRESETS))
    p.add_argument("--max-tokens", type=int, default=0, help="0: the whole text")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--out", default=None, help="write JSON here")
    args = p.parse_args()

    model = load_model(args.model)
    text, label = read_text(None)
    tokens = model.tokenizer.encode(text)
    kw = dict(seq_len=args.seq_len, batch_size=args.batch_size, max_tokens=args.max_tokens or None)
    base = pipeline.evaluate(model, model.params, tokens, desc="original", **kw)
    rows = [{"recipe": "original (f32)", "perplexity": base.ppl, "delta_percent": 0.0,
             "param_bytes": pipeline.param_bytes(model.params), "quantize_seconds": 0.0,
             "tokens_per_second": base.tokens_per_second}]
    for name in args.presets.split(","):
        qparams, seconds, _ = pipeline.quantize_model(model, args.model, get_preset(name))
        r = pipeline.evaluate(model, qparams, tokens, desc=name, **kw)
        rows.append({"recipe": name, "perplexity": r.ppl,
                     "delta_percent": 100 * (r.ppl - base.ppl) / base.ppl,
                     "param_bytes": pipeline.param_bytes(qparams), "quantize_seconds": seconds,
                     "tokens_per_second": r.tokens_per_second})
        print(f"{name}: ppl {r.ppl:.3f}", flush=True)
    print(f"\n{args.model}, {base.n_tokens:,} tokens of {label}, seq_len {args.seq_len}, "
          f"{jax.devices()[0].device_kind}\n")
    print("| recipe | perplexity | change | parameter bytes | quantize s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['recipe']} | {r['perplexity']:.3f} | {r['delta_percent']:+.2f}% | "
              f"{r['param_bytes']:,} | {r['quantize_seconds']:.1f} |")
    if args.out:
        meta = {"date": datetime.date.today().isoformat(), "model": args.model, "text": label,
                "tokens_scored": base.n_tokens, "seq_len": args.seq_len,
                "device": jax.devices()[0].device_kind, "machine": platform.machine(),
                "jax": jax.__version__}
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
