"""Perplexity, cache bytes per token and greedy tokens of a model with a bf16 / int8 / fp8 /
int4 KV cache against the float cache, on the bundled evaluation text.

    python -m jaxquant.evaluation.kv_cache_table [--model smollm2-135m] [--formats ...]
        [--short-seq-len 512 --short-tokens 16384] [--long-seq-len 8192 --long-tokens 8192]
        [--new-tokens 32] [--out FILE.json]

Every window goes through the model with a fresh cache of the format (the prompt's K/V are
stored quantized and attention reads them back), so perplexity measures the cache alone; the
weights stay in float. "float" is the cache in the model's compute dtype (no cache
quantization). Prints a markdown table and writes JSON with the date and device.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from typing import Any

import jax
import jax.numpy as jnp

from jaxquant.cli import pipeline
from jaxquant.evaluation import read_text
from jaxquant.kernels.decode_attention.layouts import KVCacheSpec
from jaxquant.models import kv_cache, load_model
from jaxquant.models.generate import generate

DEFAULT_FORMATS = ("bf16", "int8", "fp8", "int4", "int4:32")
PROMPTS = ("The capital of France is", "Emma Woodhouse, handsome, clever, and rich,")


def parse_format(name: str) -> KVCacheSpec | None:
    """'float' -> None; 'int4:32' -> int4 with groups of 32 channels; else a format name."""
    if name == "float":
        return None
    fmt, _, group = name.partition(":")
    return KVCacheSpec(fmt, int(group) if group else None)


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token (None when one is a prefix of the other)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--formats", default=",".join(DEFAULT_FORMATS),
                   help="comma-separated: bf16, int8, fp8, int4, FORMAT:GROUP (float is the base)")
    p.add_argument("--short-seq-len", type=int, default=512)
    p.add_argument("--short-tokens", type=int, default=16384)
    p.add_argument("--long-seq-len", type=int, default=0, help="0: the model's context length")
    p.add_argument("--long-tokens", type=int, default=0, help="0: one window")
    p.add_argument("--batch-size", type=int, default=4, help="short windows per forward")
    p.add_argument("--new-tokens", type=int, default=32, help="greedy tokens per prompt")
    p.add_argument("--out", default=None, help="write JSON here")
    args = p.parse_args(argv)

    model = load_model(args.model)
    cfg = model.config
    text, label = read_text(None)
    tokens = model.tokenizer.encode(text)
    long_len = args.long_seq_len or cfg.max_seq_len
    settings = [("short", args.short_seq_len, args.short_tokens, args.batch_size),
                ("long", long_len, args.long_tokens or long_len, 1)]
    meta = {"date": datetime.date.today().isoformat(), "device": jax.devices()[0].device_kind,
            "platform": platform.processor() or platform.machine(), "jax": jax.__version__,
            "model": args.model, "text": label, "compute_dtype": jnp.dtype(cfg.dtype).name,
            "weights": "float (original)", "new_tokens": args.new_tokens}
    names = ["float"] + [f for f in args.formats.split(",") if f]
    greedy_float: dict[str, list[int]] = {}
    rows = []
    for name in names:
        spec = parse_format(name)
        cache = kv_cache.init_cache(cfg, 1, 16, kv=spec)
        row: dict[str, Any] = {"kv_cache": name,
                               "bytes_per_token": kv_cache.bytes_per_token(cfg, spec),
                               "measured_bytes_per_token": cache.nbytes // cache.max_len}
        for tag, seq, n, bs in settings:
            r = pipeline.evaluate(model, model.params, tokens, seq_len=seq, batch_size=bs,
                                  max_tokens=n, desc=f"{name} {tag}", kv=spec)
            row[tag] = {"seq_len": seq, "tokens_scored": r.n_tokens, "perplexity": r.ppl,
                        "nll": r.nll}
        row["greedy"] = []
        for prompt in PROMPTS:
            ids = generate(pipeline.step_fn(model), model.params,
                           lambda b, n, s=spec: model.module.init_cache(b, n, kv=s),
                           model.tokenizer.encode(prompt), max_new_tokens=args.new_tokens)
            greedy_float.setdefault(prompt, ids)
            row["greedy"].append({"prompt": prompt, "text": model.tokenizer.decode(ids),
                                  "tokens": ids,
                                  "first_divergence": first_divergence(ids, greedy_float[prompt])})
        for tag, *_ in settings:
            base_ppl = (rows[0] if rows else row)[tag]["perplexity"]
            row[tag]["delta_percent"] = 100 * (row[tag]["perplexity"] / base_ppl - 1)
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("kv_cache", "short", "long")}), flush=True)
        if args.out:  # after every format, so that a long run keeps what it measured
            with open(args.out, "w") as f:
                json.dump({"meta": meta, "rows": rows}, f, indent=1)
    base = rows[0]
    s, lg = settings[0], settings[1]
    print(f"\n| KV cache | bytes/token | ppl @ {s[1]} ({base['short']['tokens_scored']:,} tokens) | "
          f"ppl @ {lg[1]} ({base['long']['tokens_scored']:,} tokens) | greedy: first divergence "
          f"from float ({args.new_tokens} tokens, {len(PROMPTS)} prompts) |")
    print("|---|---|---|---|---|")
    for r in rows:
        div = ", ".join("same" if g["first_divergence"] is None else f"token {g['first_divergence']}"
                        for g in r["greedy"])
        print(f"| {r['kv_cache']} | {r['bytes_per_token']:,} | {r['short']['perplexity']:.3f} "
              f"({r['short']['delta_percent']:+.2f}%) | {r['long']['perplexity']:.3f} "
              f"({r['long']['delta_percent']:+.2f}%) | {div} |")
    return rows


if __name__ == "__main__":
    main()
