"""Calibrated PTQ methods x settings on one model, with Qwix side by side: perplexity, change,
parameter bytes and time to quantize, on the same evaluation windows.

    pip install "jaxquant[bench]"     # qwix, for the side-by-side columns (else --no-qwix)
    python -m jaxquant.evaluation.method_table [--max-tokens 8192] [--calib-tokens 8192]
        [--calib-text FILE] [--only "int4 g128"] [--methods RTN,GPTQ] [--no-qwix] [--out results.json]

Settings: int4 and int4_full g128 (the w4a16 scheme on either grid; Qwix's columns on int4_full
g128 and g64 with f32 scales, as Qwix stores them), W8A8 int8 / int8_full / FP8
(dynamic per-token activations: RTN, SmoothQuant at alpha 0.5 and with the alpha search), int3
and int3_full g128, int4_full per-channel, int4_full and int3_full g128 with the sign-aware
scale; weight-only settings with RTN (min-max range), RTN with an MSE-searched clip per group
(int4 g128), GPTQ (act-order, MSE clip) and AWQ (also with duo scaling and with a 40-point
alpha grid); W8A8 settings also with GPTQ, SmoothQuant + GPTQ and SmoothQuant calibrated
sequentially (by default it calibrates on the float model's block outputs);
"FP8 granularity" splits FP8's error between weights and activations. Calibration uses the
bundled Persuasion slice, evaluation the Emma slice. Writes JSON (date, device, settings, rows)
after every row and prints a markdown table; `share` is a method's perplexity increase as a
fraction of RTN's at the same setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform

import jax

import jaxquant as jq
from jaxquant.cli import pipeline
from jaxquant.core.spec import Clipping
from jaxquant.evaluation import read_text
from jaxquant.evaluation.compare_qwix import QwixSetting, qwix_quantize, qwix_version
from jaxquant.evaluation.perplexity import perplexity
from jaxquant.recipes import get_preset
from jaxquant.recipes.schemes import WeightScheme

BLOCK_TARGETS = (r"re:layers_\d+/(attn|mlp)/[a-z_]+/kernel$",)
GPTQ_ARGS = {"act_order": True, "damp": 0.01}
QWIX_SQ_NOTE = "W8A16: Qwix's SqInferenceProvider leaves activations in float"


@dataclasses.dataclass(frozen=True)
class Row:
    """One cell of the table: a setting (scheme) x a method, and Qwix's counterpart (a
    QwixSetting, a string saying why Qwix has none, or None: not compared)."""

    setting: str
    method: str
    recipe: jq.Recipe
    qwix: QwixSetting | str | None = None


def _rule(weight: WeightScheme, method: str, activation=None, **args) -> jq.Recipe:
    rule = jq.Rule(BLOCK_TARGETS, weight, activation=activation, method=method, method_args=args)
    return jq.Recipe((rule,), name=f"{weight.format}-{method}")


def weight_only_rows(setting: str, weight: WeightScheme, qwix: dict, mse: bool = True,
                     float_inputs: bool = False) -> list[Row]:
    """RTN (and with an MSE clip), GPTQ, AWQ; float_inputs adds AWQ calibrated on the float
    model's block outputs (method_args sequential: false), as Qwix calibrates."""
    clipped = dataclasses.replace(weight, clipping=dataclasses.replace(weight.clipping, method="mse"))
    return [
        Row(setting, "RTN", _rule(weight, "rtn"), qwix.get("rtn")),
        *([Row(setting, "RTN, MSE clip", _rule(clipped, "rtn"))] if mse else []),
        Row(setting, "GPTQ", _rule(clipped, "gptq", **GPTQ_ARGS), qwix.get("gptq")),
        Row(setting, "AWQ", _rule(weight, "awq"), qwix.get("awq")),
        Row(setting, "AWQ, duo scaling", _rule(weight, "awq", duo_scaling=True)),
        Row(setting, "AWQ, grid 40", _rule(weight, "awq", grid=40)),
        Row(setting, "AWQ, refine", _rule(weight, "awq", refine=True), qwix.get("awq")),
        *([Row(setting, "AWQ (float inputs)", _rule(weight, "awq", sequential=False),
               qwix.get("awq"))] if float_inputs else []),
    ]


def w8a8_rows(setting: str, preset: str, qwix: dict, fmt: str | None = None) -> list[Row]:
    rule = get_preset(preset).rules[0]
    weight, act = rule.weight, rule.activation
    if fmt is not None:  # the same scheme on another grid (int8 -> int8_full)
        weight = dataclasses.replace(weight, format=fmt)
        act = dataclasses.replace(act, format=fmt)
    clipped = dataclasses.replace(weight, clipping=dataclasses.replace(weight.clipping, method="mse"))
    return [Row(setting, "RTN", _rule(weight, "rtn", act), qwix.get("rtn")),
            Row(setting, "SmoothQuant", _rule(weight, "smoothquant", act),
                qwix.get("smoothquant")),
            Row(setting, "SmoothQuant, auto alpha", _rule(weight, "smoothquant", act,
                                                          alpha="auto")),
            Row(setting, "SmoothQuant (sequential)",
                _rule(weight, "smoothquant", act, sequential=True), qwix.get("smoothquant")),
            Row(setting, "GPTQ", _rule(clipped, "gptq", act, **GPTQ_ARGS)),
            Row(setting, "SmoothQuant + GPTQ", _rule(clipped, "smoothquant", act, gptq=True,
                                                     **GPTQ_ARGS)),
            Row(setting, "SmoothQuant, auto alpha + GPTQ",
                _rule(clipped, "smoothquant", act, alpha="auto", gptq=True, **GPTQ_ARGS))]


def fp8_granularity_rows() -> list[Row]:
    """Where FP8 W8A8's error comes from: E4M3 weights alone (per channel, per 128-group; 128 x 128
    blocks do not tile SmolLM2's 576) and with dynamic per-token E4M3 activations (RTN)."""
    act = get_preset("fp8").rules[0].activation
    weights = {"channel": WeightScheme("fp8_e4m3", "channel"),
               "g128": WeightScheme("fp8_e4m3", "group", 128, ragged_groups=True)}
    rows = []
    for name, w in weights.items():
        rows.append(Row("FP8 granularity", f"W {name}, A16", _rule(w, "rtn")))
        rows.append(Row("FP8 granularity", f"W {name}, A per token", _rule(w, "rtn", act)))
    return rows


def all_rows() -> list[Row]:
    """Every row; Qwix's integer grid is the full one (amax -> 2^(b-1) - 0.5, codes down to
    -2^(b-1)), so its columns sit on the int*_full rows."""
    g128 = get_preset("w4a16").rules[0].weight  # int4, group 128, symmetric, bf16 scales
    g128 = dataclasses.replace(g128, format="int4")
    full = dataclasses.replace(g128, format="int4_full")
    # Qwix keeps scales in the weight's dtype (f32 here): the rows it is compared on do too
    full32 = dataclasses.replace(full, scale_dtype="float32")
    return [
        *weight_only_rows("int4 g128", g128, {}),
        *weight_only_rows("int4_full g128", full, {}, mse=False),
        *weight_only_rows("int4_full g128 (signed scale)",
                          dataclasses.replace(full, clipping=Clipping(signed=True)), {}, mse=False),
        *weight_only_rows("int4_full g128 (f32 scales)", full32, {
            "rtn": QwixSetting("int4", tile_size=128),
            "gptq": QwixSetting("int4", "gptq", tile_size=128),
            "awq": QwixSetting("int4", "awq", tile_size=128)}, mse=False),
        *weight_only_rows("int4_full g64 (f32 scales)",
                          dataclasses.replace(full32, group_size=64), {
            "rtn": QwixSetting("int4", tile_size=64),
            "gptq": QwixSetting("int4", "gptq", tile_size=64),
            "awq": QwixSetting("int4", "awq", tile_size=64)}, mse=False, float_inputs=True),
        *w8a8_rows("W8A8 int8", "w8a8-int8", {}),
        *w8a8_rows("W8A8 int8_full", "w8a8-int8", {
            "rtn": QwixSetting("int8", act_qtype="int8"),
            "smoothquant": QwixSetting("int8", "smoothquant", act_qtype="int8",
                                       note=QWIX_SQ_NOTE)}, "int8_full"),
        *w8a8_rows("W8A8 FP8", "fp8", {}),
        *fp8_granularity_rows(),
        *weight_only_rows("int3 g128", dataclasses.replace(g128, format="int3"), {}, mse=False),
        *weight_only_rows("int4_full per-channel", WeightScheme("int4_full", "channel"), {
            "rtn": QwixSetting("int4"), "gptq": QwixSetting("int4", "gptq"),
            "awq": QwixSetting("int4", "awq")}, mse=False),
        *weight_only_rows("int3_full g128", dataclasses.replace(g128, format="int3_full"), {},
                          mse=False),
        *weight_only_rows("int3_full g128 (signed scale)", dataclasses.replace(
            g128, format="int3_full", clipping=Clipping(signed=True)), {}, mse=False),
    ]


def _share(row: dict, rows: list[dict], base_ppl: float) -> float | None:
    """(ppl - original) / (RTN ppl - original) at the same setting."""
    rtn = [r for r in rows if r["setting"] == row["setting"] and r["method"] == "RTN"]
    if not rtn or rtn[0]["perplexity"] <= base_ppl:
        return None
    return (row["perplexity"] - base_ppl) / (rtn[0]["perplexity"] - base_ppl)


def print_table(meta: dict, rows: list[dict]) -> None:
    base = meta["original_ppl"]
    print(f"\n{meta['model']} on {meta['device']}: {meta['eval_tokens']:,} tokens of "
          f"{meta['eval_text']}, original perplexity {base:.3f}; calibration "
          f"{meta['calib_tokens']:,} tokens of {meta['calib_text']}\n")
    print("| setting | method | perplexity | change | share of RTN's | bytes | quantize s "
          "| Qwix perplexity | Qwix s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        share = _share(r, rows, base)
        q = (f"{r['qwix_ppl']:.3f}" + (f" ({r['qwix_note']})" if "qwix_note" in r else "")
             if "qwix_ppl" in r
             else f"cannot run: {r['qwix_error']}" if "qwix_error" in r else "")
        qs = f"{r['qwix_seconds']:.1f}" if "qwix_seconds" in r else ""
        print(f"| {r['setting']} | {r['method']} | {r['perplexity']:.3f} | "
              f"{r['delta_percent']:+.2f}% | {'' if share is None else f'{share:.2f}'} | "
              f"{r['param_bytes']:,} | {r['quantize_seconds']:.1f} | {q} | {qs} |")


def _names(arg: str | None) -> list[str] | None:
    """--only / --methods: names separated by ";" when there is one (names such as "SmoothQuant,
    auto alpha" contain commas), else by ","."""
    if not arg:
        return None
    return [n.strip() for n in arg.split(";" if ";" in arg else ",")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--max-tokens", type=int, default=8192, help="evaluation tokens")
    p.add_argument("--calib-tokens", type=int, default=8192)
    p.add_argument("--calib-text", default=None,
                   help="calibration text file for both libraries (default: the bundled "
                        "Persuasion slice, which never overlaps the evaluation text)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--only", default=None,
                   help="settings, separated by ',' or ';' (e.g. 'int4 g128;W8A8 FP8')")
    p.add_argument("--methods", default=None,
                   help="methods, separated by ',' or ';' (e.g. 'RTN,GPTQ' or "
                        "'SmoothQuant, auto alpha;GPTQ')")
    p.add_argument("--no-qwix", action="store_true", help="leave out the Qwix columns")
    p.add_argument("--out", default=None, help="write JSON here")
    args = p.parse_args()

    model = pipeline.cached_model(args.model)
    text, eval_label = read_text(None)
    tokens = model.tokenizer.encode(text)
    calib, calib_label = pipeline.calibration_windows(model, text=args.calib_text,
                                                      tokens=args.calib_tokens,
                                                      seq_len=args.seq_len)
    kw = dict(seq_len=args.seq_len, batch_size=4, max_tokens=args.max_tokens)
    base = pipeline.evaluate(model, model.params, tokens, desc="original", **kw)
    meta = {"date": datetime.date.today().isoformat(), "model": args.model,
            "device": jax.devices()[0].device_kind, "machine": platform.machine(),
            "jax": jax.__version__, "qwix": None if args.no_qwix else qwix_version(),
            "original_ppl": base.ppl, "original_bytes": pipeline.param_bytes(model.params),
            "eval_tokens": base.n_tokens, "eval_text": eval_label,
            "calib_tokens": int(calib.size), "calib_text": calib_label, "seq_len": args.seq_len,
            "gptq_args": GPTQ_ARGS}
    rows: list[dict] = []
    only = _names(args.only)
    methods = _names(args.methods)
    for row in all_rows():
        if (only and row.setting not in only) or (methods and row.method not in methods):
            continue
        qp, secs, _ = pipeline.quantize_model(model, args.model, row.recipe,
                                              calib_text=args.calib_text,
                                              calib_tokens=args.calib_tokens, progress=False)
        r = pipeline.evaluate(model, qp, tokens, desc=f"{row.setting} {row.method}", **kw)
        out = {"setting": row.setting, "method": row.method, "perplexity": r.ppl,
               "delta_percent": 100 * (r.ppl - base.ppl) / base.ppl,
               "param_bytes": pipeline.param_bytes(qp), "quantize_seconds": secs}
        del qp
        if isinstance(row.qwix, str):
            out["qwix_error"] = row.qwix
        elif row.qwix is not None and not args.no_qwix:
            try:
                fn, qwp, qsecs = qwix_quantize(model.module, model.params, row.qwix, calib)
                qr = perplexity(fn, qwp, tokens, desc=f"qwix {row.setting} {row.method}", **kw)
                out.update(qwix_ppl=qr.ppl, qwix_seconds=qsecs)
                if row.qwix.note:
                    out["qwix_note"] = row.qwix.note
            except Exception as e:  # noqa: BLE001 - the table reports why Qwix cannot run it
                out["qwix_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        rows.append(out)
        print(json.dumps(out), flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print_table(meta, rows)


if __name__ == "__main__":
    main()
