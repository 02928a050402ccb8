"""jaxquant against Qwix (PyPI `qwix`, the closest JAX peer) on the same Flax SmolLM2, the same
calibration and evaluation text, the same settings; perplexity and time to quantize.

    pip install qwix    # benchmark-only dependency
    python -m jaxquant.evaluation.compare_qwix [--max-tokens 16384] [--calib-tokens 16384]
        [--out results.json]

Settings: int4 group 128 (RTN, GPTQ, AWQ), int4 per-channel (RTN, GPTQ), W8A8 int8 (plain and
SmoothQuant). A setting Qwix cannot run is reported with the reason (its exception).
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import jaxquant as jq
from jaxquant.cli import pipeline
from jaxquant.evaluation import read_text
from jaxquant.evaluation.perplexity import perplexity
from jaxquant.recipes.schemes import WeightScheme

BLOCK_LAYERS = r".*layers_\d+/(attn|mlp)/.*"


def _ours(name: str, weight: WeightScheme, method: str, act: bool = False) -> jq.Recipe:
    a = jq.activation_scheme("int8") if act else None
    return jq.Recipe((jq.Rule(("re:kernel$",), weight, activation=a, method=method),), name=name)


SETTINGS: list[tuple[str, jq.Recipe, dict]] = [
    ("int4 g128 RTN", _ours("rtn-g128", WeightScheme("int4", "group", 128, ragged_groups=True),
                            "rtn"), {"weight_qtype": "int4", "tile_size": 128}),
    ("int4 g128 GPTQ", _ours("gptq-g128", WeightScheme("int4", "group", 128, ragged_groups=True),
                             "gptq"), {"weight_qtype": "int4", "tile_size": 128, "gptq": True}),
    ("int4 g128 AWQ", _ours("awq-g128", WeightScheme("int4", "group", 128, ragged_groups=True),
                            "awq"), {"unsupported": "qwix 0.1.8 has no AWQ (qwix.contrib offers "
                                                   "gptq and calibration only)"}),
    ("int4 per-channel RTN", _ours("rtn-pc", WeightScheme("int4", "channel"), "rtn"),
     {"weight_qtype": "int4"}),
    ("int4 per-channel GPTQ", _ours("gptq-pc", WeightScheme("int4", "channel"), "gptq"),
     {"weight_qtype": "int4", "gptq": True}),
    ("W8A8 int8", _ours("w8a8", WeightScheme("int8", "channel"), "rtn", act=True),
     {"weight_qtype": "int8", "act_qtype": "int8"}),
    ("W8A8 int8 SmoothQuant", _ours("w8a8-sq", WeightScheme("int8", "channel"), "smoothquant",
                                    act=True),
     {"unsupported": "qwix 0.1.8 has no SmoothQuant"}),
]


def _qwix_run(model, params, cfg: dict, calib: np.ndarray) -> tuple[Callable, Any, float]:
    """(logits_fn, qparams, seconds) for Qwix under `cfg`; raises what Qwix raises."""
    import qwix
    from qwix.contrib import gptq as qgptq
    from qwix.contrib import padded_ptq

    rule_kw = {k: cfg[k] for k in ("weight_qtype", "act_qtype", "tile_size") if k in cfg}
    tokens = jnp.asarray(calib[:1])
    start = time.perf_counter()
    if cfg.get("gptq"):
        rules = [qgptq.GptqRule(module_path=BLOCK_LAYERS, **rule_kw)]
        cal = qwix.quantize_model(model, qgptq.GptqCalibrationProvider(rules))
        variables = {"params": params["params"]}
        for b in calib:
            _, upd = cal.apply(variables, jnp.asarray(b[None]), mutable=["quant_stats"])
            variables = {**variables, **upd}
        qmodel = qwix.quantize_model(model, qwix.PtqProvider(
            [qwix.QuantizationRule(module_path=BLOCK_LAYERS, **rule_kw)]))
        abstract = jax.eval_shape(qmodel.init, jax.random.key(0), tokens)
        # stats are keyed like the inner params tree (no "params" level)
        qparams = {"params": qgptq.quantize_params(params["params"], abstract["params"],
                                                    variables["quant_stats"])}
    else:
        provider_cls = padded_ptq.PaddedPtqProvider if "tile_size" in cfg else qwix.PtqProvider
        qmodel = qwix.quantize_model(model, provider_cls(
            [qwix.QuantizationRule(module_path=BLOCK_LAYERS, **rule_kw)]))
        abstract = jax.eval_shape(qmodel.init, jax.random.key(0), tokens)
        quantize = padded_ptq.quantize_params if "tile_size" in cfg else qwix.quantize_params
        qparams = quantize(params, abstract)
    jax.block_until_ready(qparams)
    seconds = time.perf_counter() - start
    return (lambda p, t: qmodel.apply(p, t)[0]), qparams, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--max-tokens", type=int, default=16384)
    p.add_argument("--calib-tokens", type=int, default=16384)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--only", default=None, help="comma-separated setting names to run")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    import qwix

    model = pipeline.cached_model(args.model)
    tokens = model.tokenizer.encode(read_text(None)[0])
    calib, calib_label = pipeline.calibration_windows(model, text=None, tokens=args.calib_tokens,
                                                      seq_len=args.seq_len)
    kw = dict(seq_len=args.seq_len, batch_size=4, max_tokens=args.max_tokens)
    base = pipeline.evaluate(model, model.params, tokens, desc="original", **kw)
    rows = []
    for name, recipe, qcfg in SETTINGS:
        if args.only and name not in args.only.split(","):
            continue
        qp, secs, _ = pipeline.quantize_model(model, args.model, recipe,
                                              calib_tokens=args.calib_tokens, progress=False)
        ours = pipeline.evaluate(model, qp, tokens, desc=f"jaxquant {name}", **kw)
        row = {"setting": name, "jaxquant_ppl": ours.ppl, "jaxquant_seconds": secs}
        if "unsupported" in qcfg:
            row["qwix_error"] = qcfg["unsupported"]
        else:
            try:
                fn, qwp, qsecs = _qwix_run(model.module, model.params, qcfg, calib)
                r = perplexity(fn, qwp, tokens, desc=f"qwix {name}", **kw)
                row.update(qwix_ppl=r.ppl, qwix_seconds=qsecs)
            except Exception as e:  # report why Qwix cannot run this setting
                row["qwix_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        rows.append(row)
        print(row, flush=True)
    print(f"\n{args.model}: {base.n_tokens:,} eval tokens, original perplexity {base.ppl:.3f}; "
          f"calibration {calib.size:,} tokens of {calib_label}; qwix {qwix.__version__ if hasattr(qwix, '__version__') else ''}\n")
    print("| setting | jaxquant ppl | Qwix ppl | jaxquant s | Qwix s |")
    print("|---|---|---|---|---|")
    for r in rows:
        q = f"{r['qwix_ppl']:.3f}" if "qwix_ppl" in r else f"cannot run: {r['qwix_error']}"
        qs = f"{r['qwix_seconds']:.1f}" if "qwix_seconds" in r else "-"
        print(f"| {r['setting']} | {r['jaxquant_ppl']:.3f} | {q} | {r['jaxquant_seconds']:.1f} | {qs} |")
    if args.out:
        meta = {"date": datetime.date.today().isoformat(), "model": args.model,
                "original_ppl": base.ppl, "eval_tokens": base.n_tokens,
                "calib_tokens": int(calib.size), "device": jax.devices()[0].device_kind}
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
