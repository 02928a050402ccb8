"""Calibrated quantization, one decoder block at a time (as GPTQ and llm-compressor do).

For each block: run the calibration hidden states through the float block capturing every
Dense layer's inputs into streaming statistics; apply each rule's method (SmoothQuant/AWQ
scales folded into the preceding norm or linear, else kept as the layer's `input_smooth`; GPTQ
from the Hessian; RTN); then compute the next block's inputs with the *quantized* block (or the
float one when no rule of the block calibrates sequentially: method_args sequential: false,
or SmoothQuant without GPTQ by default; recipe.calibrates_sequentially). Memory holds one
block's activations for the calibration set.
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
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

import jaxquant as jq
from jaxquant.core.qarray import QArray
from jaxquant.errors import JaxquantError
from jaxquant.methods.adapters import LlamaAdapter
from jaxquant.methods.capture import LayerStats, add_batch, captured_apply, input_groups
from jaxquant.methods.gptq_core import GPTQFactor, gptq_factor, gptq_quantize
from jaxquant.recipes.io import resolve_recipe
from jaxquant.recipes.recipe import Recipe, Rule, calibrates_sequentially, uses_gptq
from jaxquant.transform import attach_activation, default_axis, quantize_leaf
from jaxquant.tree_paths import flatten

CALIBRATED = ("gptq", "awq", "smoothquant")
AWQ_SAMPLE_ROWS = 2048
SQ_SAMPLE_ROWS = 512  # activation rows SmoothQuant's alpha search (alpha: "auto") scores
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
        if uses_gptq(rule):
            k = stats[rel].hessian.shape[0]
            n = int(stats[rel].count)
            if n < k:
                raise JaxquantError(
                    f"GPTQ on {rel}: {n} calibration tokens cannot determine a {k}x{k} Hessian; "
                    f"give at least {k} tokens (ideally 4x that)"
                )


def _smooth_group(mapping, rules: dict[str, Rule], stats, block: dict, report, prefix,
                  applied: dict[str, Array]) -> set[str]:
    """Apply AWQ/SmoothQuant to the layers of `mapping` that share one of these methods; fold the
    scales into the preceding op and record them in `applied` (layer -> s [K]). Returns the
    layers handled."""
    method = {rules[r].method for r in mapping.layers if r in rules}
    if len(method) != 1 or method.pop() not in ("awq", "smoothquant"):
        return set()
    if any(r not in rules for r in mapping.layers):
        return set()  # folding would change a layer this recipe keeps in float
    from jaxquant.methods import awq_core
    rule = rules[mapping.layers[0]]
    ws = [_get(block, r + "/kernel") for r in mapping.layers]
    st = stats[mapping.layers[0]]
    s, details = _smoothing(rule, st, ws, [prefix + r for r in mapping.layers])
    prev = _get(block, mapping.prev)
    if mapping.prev_kind == "norm":
        prev["scale"] = awq_core.fold_into_norm(prev["scale"], s)
    else:
        prev["kernel"] = awq_core.fold_into_linear_outputs(prev["kernel"], s)
    for r, w in zip(mapping.layers, ws):
        _get(block, r)["kernel"] = _scaled_weight(rule, w, s, st, prefix + r, r in NO_CLIP)
        report.layers[prefix + r] = {"method": rule.method, "folded_into": mapping.prev, **details}
        applied[r] = s
    return set(mapping.layers)


def _smoothing(rule: Rule, st: LayerStats, ws: list, paths: list[str]) -> tuple[Array, dict]:
    """Per-input-channel scales s [K] for the layers `ws` (at `paths`) that read one input, and
    the alpha chosen: SmoothQuant at a fixed alpha or searched (alpha "auto"), AWQ searched."""
    from jaxquant.methods import awq_core, smoothquant_core

    args = rule.method_args
    specs = [rule.weight.resolve(tuple(w.shape), 0, p) for p, w in zip(paths, ws)]
    if rule.method == "smoothquant" and args.get("alpha", 0.5) != "auto":
        alpha = float(args.get("alpha", 0.5))
        return smoothquant_core.smoothing_scales(st.absmax, ws, alpha=alpha), {"alpha": alpha}
    if rule.method == "smoothquant":
        res = smoothquant_core.alpha_search(st.samples(), st.absmax, ws, specs, rule.activation,
                                            grid=args.get("grid", 10))
    else:
        res = awq_core.awq_search(st.samples(), ws, specs, grid=args.get("grid", 20),
                                  screen=int(args.get("screen", awq_core.SCREEN)),
                                  duo_scaling=bool(args.get("duo_scaling", False)),
                                  refine=args.get("refine", awq_core.REFINE))
    return res.scales, {"alpha": float(res.alpha)}


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
                 ) -> tuple[dict, dict[str, Any], dict[str, Array]]:
    """AWQ/SmoothQuant on one block's float params (a modified copy): scales folded into the
    preceding norm/linear where the adapter declares one, else returned as {layer: smooth}
    to be stored as the layer's input_smooth. The float block computes the same function.
    Also returns every smoothed layer's s [K] (its input is now x / s)."""
    block = jax.tree_util.tree_map(lambda x: x, block)
    prefix = adapter.block_path(i) + "/"
    handled: set[str] = set()
    smooth: dict[str, Any] = {}
    applied: dict[str, Array] = {}
    for mapping in adapter.fold_mappings():
        handled |= _smooth_group(mapping, rules, stats, block, report, prefix, applied)
    for rel, rule in rules.items():  # AWQ/SmoothQuant with nothing to fold into: explicit smooth
        if rule.method in ("awq", "smoothquant") and rel not in handled:
            w = _get(block, rel + "/kernel")
            s, details = _smoothing(rule, stats[rel], [w], [prefix + rel])
            _get(block, rel)["kernel"] = _scaled_weight(rule, w, s, stats[rel], prefix + rel,
                                                        rel in NO_CLIP)
            smooth[rel] = jnp.asarray(s, jnp.float32)
            applied[rel] = s
            report.layers[prefix + rel] = {"method": rule.method, "folded_into": "input_smooth",
                                           **details}
    return block, smooth, applied


def _quantize_block(adapter, i: int, block: dict, rules: dict[str, Rule], stats, report) -> dict:
    prefix = adapter.block_path(i) + "/"
    block, smooth, applied = smooth_block(adapter, i, block, rules, stats, report)
    out = jax.tree_util.tree_map(lambda x: x, block)  # fresh nested dicts
    factors: dict[tuple, GPTQFactor] = {}  # one per shared input (q/k/v, gate/up) and settings
    for rel, rule in rules.items():
        path = prefix + rel + "/kernel"
        w = _get(block, rel + "/kernel")
        if uses_gptq(rule):
            spec = rule.weight.resolve(tuple(w.shape), default_axis(path, w.ndim), path)
            args = rule.method_args
            damp, act_order = float(args.get("damp", 0.01)), bool(args.get("act_order", False))
            s = applied.get(rel)
            key = (id(stats[rel]), None if s is None else id(s), damp, act_order)
            if key not in factors:
                h = stats[rel].hessian
                if s is not None:  # the smoothed layer reads x / s: H -> H / (s s^T)
                    inv = 1.0 / jnp.asarray(s, jnp.float32)
                    h = h * inv[:, None] * inv[None, :]
                factors[key] = gptq_factor(h, damp=damp, act_order=act_order)
            q = gptq_quantize(w, None, spec, block_size=int(args.get("block_size", 128)),
                              act_order=act_order, factor=factors[key])
            q = attach_activation(q, rule)
            report.layers.setdefault(path[:-7], {"method": "gptq"})["gptq"] = True
        else:
            q = quantize_leaf(path, w, rule)
            report.layers.setdefault(path[:-7], {"method": rule.method})
        if rel in smooth:
            q = dataclasses.replace(q, input_smooth=smooth[rel])
        _set(out, rel + "/kernel", q)
    return out


@functools.lru_cache(maxsize=8)
def _forward(adapter):
    """jit of the adapter's shared block module under jaxquant.intercept(): (variables, hidden)
    -> next hidden; one compiled function serves every block with the same parameter layout."""
    module = adapter.shared_block_module()

    def run(variables: Any, h: Array) -> Array:
        with jq.intercept():
            return module.apply(variables, h, *adapter.block_args(h))[0]

    return jax.jit(run)


def _sample_rows(rule: Rule | None) -> int:
    if rule is not None and rule.method == "awq":
        return AWQ_SAMPLE_ROWS
    if rule is not None and rule.method == "smoothquant" and rule.method_args.get("alpha") == "auto":
        return SQ_SAMPLE_ROWS
    return 0


@functools.lru_cache(maxsize=8)
def _stats_step(adapter, needs: tuple[tuple[tuple[str, ...], int, bool, int], ...],
                outputs: bool):
    """jit of one calibration batch through the float block, adding every captured input into
    the statistics of its input group: (block, hidden, {group leader: LayerStats}) -> (updated
    statistics, the block's output hidden if `outputs` else None). needs: (group, K, hessian,
    sample rows) per group; only these leave the compiled function, never the [T, K]
    activations (without `outputs`, XLA drops the block's last matmul)."""
    capture = captured_apply(adapter.shared_block_module(), quantized=False)

    def step(block: dict, h: Array, stats: dict[str, LayerStats]
             ) -> tuple[dict[str, LayerStats], Array | None]:
        out, seen = capture({"params": block}, h, *adapter.block_args(h))
        found = {g[0]: add_batch(stats[g[0]], seen[g[0]]) for g, *_ in needs}
        return found, out[0] if outputs else None

    return jax.jit(step)


_LAYOUTS: dict[Any, tuple[tuple[tuple[str, ...], int], ...]] = {}


def input_groups_of(adapter, block: dict, h: Array) -> tuple[tuple[tuple[str, ...], int], ...]:
    """The block's Dense layers grouped by shared input (q/k/v, gate/up), each with its K, from
    one abstract trace per parameter layout (nothing is computed)."""
    leaves, tree = jax.tree_util.tree_flatten(block)
    key = (adapter, tree, tuple((x.shape, str(x.dtype)) for x in leaves), h.shape, str(h.dtype))
    if key not in _LAYOUTS:
        capture = captured_apply(adapter.shared_block_module(), quantized=False)
        found: list = []

        def trace(block: dict, h: Array) -> None:
            _, seen = capture({"params": block}, h, *adapter.block_args(h))
            found.extend((g, seen[g[0]].shape[-1]) for g in input_groups(seen))

        jax.eval_shape(trace, block, h)
        _LAYOUTS[key] = tuple(found)
    return _LAYOUTS[key]


def block_statistics(adapter, i: int, block: dict, rules: dict[str, Rule], hidden: list,
                     outputs: bool = False
                     ) -> dict[str, LayerStats] | tuple[dict[str, LayerStats], list | None]:
    """Streaming input statistics of block i's Dense layers over the calibration hidden states
    (Hessians for GPTQ layers, activation samples for AWQ and auto-alpha SmoothQuant). Layers
    reading the same input share one LayerStats object. outputs=True also returns the float
    block's outputs for every batch of `hidden` from the same pass (None when the block has
    nothing to calibrate and no pass ran)."""
    if not any(r.method in CALIBRATED for r in rules.values()):
        return ({}, None) if outputs else {}
    needs = tuple(
        (g, k, any(uses_gptq(rules[r]) for r in g if r in rules),
         max(_sample_rows(rules.get(r)) for r in g))
        for g, k in input_groups_of(adapter, block, hidden[0]))
    stats = {g[0]: LayerStats.init(k, hessian=hess, sample_rows=rows)
             for g, k, hess, rows in needs}
    step = _stats_step(adapter, needs, outputs)
    after = []
    for h in hidden:
        stats, out = step(block, h, stats)
        after.append(out)
    found = {r: stats[g[0]] for g, *_ in needs for r in g}
    _min_tokens(found, {r: v for r, v in rules.items() if uses_gptq(v)})
    return (found, after) if outputs else found


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
    hidden, outputs=False) gathers block i's layer statistics, with outputs=True also the float
    block's outputs (block_statistics; jaxquant.sharding swaps in data-parallel ones)."""
    recipe = resolve_recipe(recipe)
    adapter = LlamaAdapter(model)
    wins = np.asarray(calibration_tokens, np.int32)
    if wins.ndim != 2 or wins.shape[0] == 0:
        raise JaxquantError("calibration_tokens must be a non-empty [n_windows, seq_len] array")
    report = CalibrationReport(tokens=int(wins.size))
    start = time.perf_counter()
    # OpenBLAS (LAPACK behind jnp.linalg.cholesky on CPU) with more than one thread is 50-100x
    # slower at GPTQ's factorizations on a small CPU (measured 494 ms vs 5 ms for 576 x 576 on 2
    # cores), and XLA already uses every core for the rest: one BLAS thread while calibrating.
    with threadpool_limits(limits=1, user_api="blas"):
        params = _quantize_blocks(adapter, params, recipe, wins, report, batch_size, progress,
                                  place_batch, statistics)
    report.seconds = time.perf_counter() - start
    return params, report


def _quantize_blocks(adapter, params, recipe: Recipe, wins: np.ndarray,
                     report: CalibrationReport, batch_size: int, progress: bool,
                     place_batch: Callable, statistics: Callable) -> Any:
    """quantize_calibrated's block loop and the round-to-nearest rest."""
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
        # no rule here calibrates sequentially: the next block reads the float block's outputs
        # (Qwix's and the original SmoothQuant/AWQ calibration), taken from the statistics pass
        # itself, instead of a pass through the quantized block
        floats = bool(rules) and not any(calibrates_sequentially(r) for r in rules.values())
        last = i == adapter.n_blocks - 1  # nothing reads the last block's outputs
        stats, after = (statistics(adapter, i, block, rules, hidden, outputs=True)
                        if floats and not last
                        else (statistics(adapter, i, block, rules, hidden), None))
        qblock = _quantize_block(adapter, i, block, rules, stats, report)
        params["params"][f"layers_{i}"] = qblock
        if after is not None:
            hidden = after
        elif not last:
            run = _forward(adapter)
            hidden = [run({"params": block if floats else qblock}, h) for h in hidden]
        report.block_seconds.append(time.perf_counter() - t0)
    # leaves outside the blocks: round to nearest under the same recipe
    rest = Recipe(tuple(dataclasses.replace(r, method="rtn", method_args={}) for r in recipe.rules),
                  ignore=recipe.ignore + (r"re:(^|/)layers_\d+/",), name=recipe.name)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        params = jq.quantize(params, rest)
    if not used_rules and not any(isinstance(x, QArray) for _, x in flatten(params)[0]):
        raise JaxquantError(f"recipe {recipe.name!r} targets no layer of this model")
    return params
