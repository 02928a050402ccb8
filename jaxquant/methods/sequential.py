"""Calibrated quantization, one decoder block at a time (as GPTQ and llm-compressor do).

For each block: run the calibration hidden states through the float block capturing every
Dense layer's inputs into streaming statistics; apply each rule's method (SmoothQuant/AWQ
scales folded into the preceding norm or linear, else kept as the layer's `input_smooth`; GPTQ
from the Hessian; RTN); then compute the next block's inputs with the *quantized* block. Memory
holds one block's activations for the calibration set.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import Array
import numpy as np
from tqdm.auto import tqdm

import jaxquant as jq
from jaxquant.core.qarray import QArray
from jaxquant.errors import JaxquantError
from jaxquant.methods.adapters import LlamaAdapter
from jaxquant.methods.capture import LayerStats, captured_apply, update_stats
from jaxquant.methods.gptq_core import gptq_quantize
from jaxquant.recipes.io import resolve_recipe
from jaxquant.recipes.recipe import Recipe, Rule
from jaxquant.transform import attach_activation, default_axis, quantize_leaf
from jaxquant.tree_paths import flatten

CALIBRATED = ("gptq", "awq", "smoothquant")
AWQ_SAMPLE_ROWS = 2048
# AWQ's clip search scores a layer's own output; q and k feed q k^T, where that error measure is
# misleading (AutoAWQ skips them too)
NO_CLIP = ("attn/q_proj", "attn/k_proj")


@dataclasses.dataclass
class CalibrationReport:
    tokens: int
    seconds: float = 0.0
    block_seconds: list[float] = dataclasses.field(default_factory=list)
    layers: dict[str, dict] = dataclasses.field(default_factory=dict)  # path -> method details


def _get(tree: dict, rel: str) -> Any:
    for part in rel.split("/"):
        tree = tree[part]
    return tree


def _set(tree: dict, rel: str, value: Any) -> None:
    parts = rel.split("/")
    for part in parts[:-1]:
        tree = tree[part]
    tree[parts[-1]] = value


def _min_tokens(stats: dict[str, LayerStats], rules: dict[str, Rule]) -> None:
    for rel, rule in rules.items():
        if rule.method == "gptq":
            k = stats[rel].hessian.shape[0]
            n = int(stats[rel].count)
            if n < k:
                raise JaxquantError(
                    f"GPTQ on {rel}: {n} calibration tokens cannot determine a {k}x{k} Hessian; "
                    f"give at least {k} tokens (ideally 4x that)"
                )


def _smooth_group(mapping, rules: dict[str, Rule], stats, block: dict, report, prefix) -> set[str]:
    """Apply AWQ/SmoothQuant to the layers of `mapping` that share one of these methods; fold the
    scales into the preceding op. Returns the layers handled."""
    method = {rules[r].method for r in mapping.layers if r in rules}
    if len(method) != 1 or method.pop() not in ("awq", "smoothquant"):
        return set()
    if any(r not in rules for r in mapping.layers):
        return set()  # folding would change a layer this recipe keeps in float
    from jaxquant.methods import awq_core, smoothquant_core
    rule = rules[mapping.layers[0]]
    ws = [_get(block, r + "/kernel") for r in mapping.layers]
    st = stats[mapping.layers[0]]
    if rule.method == "smoothquant":
        alpha = float(rule.method_args.get("alpha", 0.5))
        s = smoothquant_core.smoothing_scales(st.absmax, ws, alpha=alpha)
        details = {"alpha": alpha}
    else:
        specs = [rule.weight.resolve(w.shape, 0, prefix + r) for r, w in zip(mapping.layers, ws)]
        res = awq_core.awq_search(st.samples(), ws, specs,
                                  grid=int(rule.method_args.get("grid", 20)))
        s, details = res.scales, {"alpha": float(res.alpha)}
    prev = _get(block, mapping.prev)
    if mapping.prev_kind == "norm":
        prev["scale"] = awq_core.fold_into_norm(prev["scale"], s)
    else:
        prev["kernel"] = awq_core.fold_into_linear_outputs(prev["kernel"], s)
    for r, w in zip(mapping.layers, ws):
        _get(block, r)["kernel"] = _scaled_weight(rule, w, s, st, prefix + r, r in NO_CLIP)
        report.layers[prefix + r] = {"method": rule.method, "folded_into": mapping.prev, **details}
    return set(mapping.layers)


def _scaled_weight(rule: Rule, w: Any, s: Any, st: LayerStats, path: str, no_clip: bool) -> Any:
    """W * s[:, None]; for AWQ (method_args clip, default True) then clipped per quantization
    block to the ratio that minimizes the block's output error on the scaled activations."""
    from jaxquant.methods import awq_core

    ws = awq_core.scale_weights(w, s)
    if rule.method != "awq" or no_clip or not rule.method_args.get("clip", True):
        return ws
    spec = rule.weight.resolve(tuple(w.shape), 0, path)
    x = st.samples() / s[None, :]
    return awq_core.apply_clip(ws, awq_core.awq_clip_search(x, ws, spec), spec)


def smooth_block(adapter, i: int, block: dict, rules: dict[str, Rule], stats, report
                 ) -> tuple[dict, dict[str, Any]]:
    """AWQ/SmoothQuant on one block's float params (a modified copy): scales folded into the
    preceding norm/linear where the adapter declares one, else returned as {layer: smooth}
    to be stored as the layer's input_smooth. The float block computes the same function."""
    block = jax.tree_util.tree_map(lambda x: x, block)
    prefix = adapter.block_path(i) + "/"
    handled: set[str] = set()
    smooth: dict[str, Any] = {}
    for mapping in adapter.fold_mappings():
        handled |= _smooth_group(mapping, rules, stats, block, report, prefix)
    for rel, rule in rules.items():  # AWQ/SmoothQuant with nothing to fold into: explicit smooth
        if rule.method in ("awq", "smoothquant") and rel not in handled:
            from jaxquant.methods import awq_core, smoothquant_core

            w = _get(block, rel + "/kernel")
            if rule.method == "smoothquant":
                s = smoothquant_core.smoothing_scales(
                    stats[rel].absmax, [w], alpha=float(rule.method_args.get("alpha", 0.5)))
            else:
                spec = rule.weight.resolve(w.shape, 0, prefix + rel)
                s = awq_core.awq_search(stats[rel].samples(), [w], [spec]).scales
            _get(block, rel)["kernel"] = _scaled_weight(rule, w, s, stats[rel], prefix + rel,
                                                        rel in NO_CLIP)
            smooth[rel] = jnp.asarray(s, jnp.float32)
            report.layers[prefix + rel] = {"method": rule.method, "folded_into": "input_smooth"}
    return block, smooth


def _quantize_block(adapter, i: int, block: dict, rules: dict[str, Rule], stats, report) -> dict:
    prefix = adapter.block_path(i) + "/"
    block, smooth = smooth_block(adapter, i, block, rules, stats, report)
    out = jax.tree_util.tree_map(lambda x: x, block)  # fresh nested dicts
    for rel, rule in rules.items():
        path = prefix + rel + "/kernel"
        w = _get(block, rel + "/kernel")
        if rule.method == "gptq":
            spec = rule.weight.resolve(tuple(w.shape), default_axis(path, w.ndim), path)
            args = rule.method_args
            q = gptq_quantize(w, stats[rel].hessian, spec,
                              block_size=int(args.get("block_size", 128)),
                              damp=float(args.get("damp", 0.01)),
                              act_order=bool(args.get("act_order", False)))
            q = attach_activation(q, rule)
            report.layers.setdefault(path[:-7], {"method": "gptq"})
        else:
            q = quantize_leaf(path, w, rule)
            report.layers.setdefault(path[:-7], {"method": rule.method})
        if rel in smooth:
            q = dataclasses.replace(q, input_smooth=smooth[rel])
        _set(out, rel + "/kernel", q)
    return out


@functools.lru_cache(maxsize=8)
def _compiled(adapter, quantized: bool):
    """jit(captured_apply) of the adapter's shared block module: compiled once per parameter
    structure and reused by every block."""
    return jax.jit(captured_apply(adapter.shared_block_module(), quantized=quantized))


def block_statistics(adapter, i: int, block: dict, rules: dict[str, Rule], hidden: list
                     ) -> dict[str, LayerStats]:
    """Streaming input statistics of block i's Dense layers over the calibration hidden states
    (Hessians for GPTQ layers, activation samples for the targeted ones)."""
    if not any(r.method in CALIBRATED for r in rules.values()):
        return {}
    capture = _compiled(adapter, quantized=False)
    stats: dict[str, LayerStats] = {}
    for h in hidden:
        _, seen = capture({"params": block}, h, *adapter.block_args(h))
        for rel, x in seen.items():
            if rel not in stats:
                method = rules[rel].method if rel in rules else None
                rows = AWQ_SAMPLE_ROWS if method == "awq" else 0
                gptq = method == "gptq"
                stats[rel] = LayerStats.init(x.shape[-1], hessian=gptq, sample_rows=rows)
            stats[rel] = update_stats(stats[rel], x)
    _min_tokens(stats, {r: v for r, v in rules.items() if v.method == "gptq"})
    return stats


def quantize_calibrated(
    model: Any,
    params: Any,
    recipe: Recipe | str,
    calibration_tokens: np.ndarray,
    *,
    batch_size: int = 8,
    progress: bool = True,
    place_batch: Callable[[np.ndarray], Array] = jnp.asarray,
    statistics: Callable[..., dict[str, LayerStats]] = block_statistics,
) -> tuple[Any, CalibrationReport]:
    """Quantize `params` of `model` (jaxquant.models.Llama) with a recipe whose rules may use
    gptq / awq / smoothquant, calibrating on `calibration_tokens` int32 [n_windows, T].
    Layers outside the decoder blocks (e.g. an untied head) use round-to-nearest.
    place_batch puts one batch of windows on device(s); statistics(adapter, i, block, rules,
    hidden) gathers block i's layer statistics (jaxquant.sharding swaps in data-parallel ones)."""
    recipe = resolve_recipe(recipe)
    adapter = LlamaAdapter(model)
    wins = np.asarray(calibration_tokens, np.int32)
    if wins.ndim != 2 or wins.shape[0] == 0:
        raise JaxquantError("calibration_tokens must be a non-empty [n_windows, seq_len] array")
    report = CalibrationReport(tokens=int(wins.size))
    start = time.perf_counter()
    params = jax.tree_util.tree_map(lambda x: x, params)  # never modify the caller's tree
    embed = jax.jit(adapter.embed)
    hidden = [embed(params, place_batch(wins[j: j + batch_size]))
              for j in range(0, len(wins), batch_size)]
    used_rules: set[int] = set()
    for i in tqdm(range(adapter.n_blocks), desc="calibrated quantization", disable=not progress):
        t0 = time.perf_counter()
        prefix = adapter.block_path(i) + "/"
        block = adapter.block_params(params, i)
        rules: dict[str, Rule] = {}
        for path, _ in flatten({"k": block})[0]:
            rel = path[2:]
            if not rel.endswith("/kernel"):
                continue
            found = recipe.rule_for(prefix + rel)
            if found is not None:
                used_rules.add(found[0])
                rules[rel[: -len("/kernel")]] = found[1]
        stats = statistics(adapter, i, block, rules, hidden)
        qblock = _quantize_block(adapter, i, block, rules, stats, report)
        params["params"][f"layers_{i}"] = qblock
        run = _compiled(adapter, quantized=True)
        hidden = [run({"params": qblock}, h, *adapter.block_args(h))[0][0] for h in hidden]
        report.block_seconds.append(time.perf_counter() - t0)
    # leaves outside the blocks: round to nearest under the same recipe
    rest = Recipe(tuple(dataclasses.replace(r, method="rtn") for r in recipe.rules),
                  ignore=recipe.ignore + (r"re:(^|/)layers_\d+/",), name=recipe.name)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        params = jq.quantize(params, rest)
    report.seconds = time.perf_counter() - start
    if not used_rules and not any(isinstance(x, QArray) for _, x in flatten(params)[0]):
        raise JaxquantError(f"recipe {recipe.name!r} targets no layer of this model")
    return params, report
