"""Where a W8A8 scheme's perplexity cost comes from: activations alone (float weights, only the
decoder blocks' Dense inputs fake-quantized per token) next to the real quantized model.

    python -m jaxquant.evaluation.activation_split [--formats fp8_e4m3,int8_full]
        [--max-tokens 8192] [--out split.json]

For each activation format: the float model with its activations quantized (no weight error at
all), and the W8A8 preset of that format run for real (weights and activations). The first is a
floor for any weight-side method (GPTQ, SmoothQuant's migration does not change FP8's relative
rounding): the perplexity the scheme costs even with exact weights.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re

import flax.linen as nn
import jax

import jaxquant as jq
from jaxquant.cli import pipeline
from jaxquant.core.spec import ActivationSpec
from jaxquant.evaluation import read_text
from jaxquant.evaluation.method_table import BLOCK_TARGETS
from jaxquant.evaluation.perplexity import perplexity
from jaxquant.models import LoadedModel
from jaxquant.qat.forward import activation_interceptor
from jaxquant.tree_paths import flatten

BLOCK_KERNEL = re.compile(BLOCK_TARGETS[0].removeprefix("re:"))  # the method table's layers
PRESETS = {"fp8_e4m3": "fp8", "int8": "w8a8-int8"}


def block_layers(params) -> list[str]:
    """Module paths ("layers_0/attn/q_proj", ...) of the decoder blocks' Dense layers."""
    return [m.group(0).removesuffix("/kernel") for p, _ in flatten(params)[0]
            if (m := BLOCK_KERNEL.search(p))]


def activations_only_fn(model: LoadedModel, spec: ActivationSpec, layers: list[str]):
    """(params, tokens) -> logits of the float model with `layers`' inputs fake-quantized."""
    specs = {name: spec for name in layers}

    def fn(params, tokens):
        with nn.intercept_methods(activation_interceptor(specs)):
            return model.module.apply(params, tokens)[0]

    return fn


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--formats", default="fp8_e4m3,int8", help=f"of {sorted(PRESETS)}")
    p.add_argument("--max-tokens", type=int, default=8192, help="evaluation tokens")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--out", default=None, help="write JSON here")
    args = p.parse_args()
    formats = [f for f in args.formats.split(",") if f]
    bad = [f for f in formats if f not in PRESETS]
    if bad:
        p.error(f"--formats {','.join(bad)}: choose from {','.join(sorted(PRESETS))}")

    model = pipeline.cached_model(args.model)
    tokens = model.tokenizer.encode(read_text(None)[0])
    kw = dict(seq_len=args.seq_len, batch_size=4, max_tokens=args.max_tokens)
    base = pipeline.evaluate(model, model.params, tokens, desc="original", **kw)
    layers = block_layers(model.params)
    rows = []
    for fmt in formats:
        preset = jq.get_preset(PRESETS[fmt])
        spec = preset.rules[0].activation
        a_only = perplexity(activations_only_fn(model, spec, layers), model.params, tokens,
                            desc=f"{fmt} activations only", **kw)
        qp, _, _ = pipeline.quantize_model(model, args.model, preset, progress=False)
        both = pipeline.evaluate(model, qp, tokens, desc=f"{PRESETS[fmt]} (W8A8)", **kw)
        for what, r in (("activations only", a_only), (f"{PRESETS[fmt]} W8A8", both)):
            rows.append({"format": fmt, "quantized": what, "perplexity": r.ppl,
                         "delta_percent": 100 * (r.ppl - base.ppl) / base.ppl})
            print(json.dumps(rows[-1]), flush=True)
    meta = {"date": datetime.date.today().isoformat(), "model": args.model,
            "device": jax.devices()[0].device_kind, "jax": jax.__version__,
            "original_ppl": base.ppl, "eval_tokens": base.n_tokens, "layers": len(layers)}
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(f"\noriginal perplexity {base.ppl:.3f} on {base.n_tokens:,} tokens\n")
    print("| activations | quantized | perplexity | change |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['format']} per token | {r['quantized']} | {r['perplexity']:.3f} | "
              f"{r['delta_percent']:+.2f}% |")


if __name__ == "__main__":
    main()
