"""Qwix (PyPI `qwix`, the closest JAX peer; a benchmark-only dependency: pip install
"jaxquant[bench]") on the same Flax model, for the side-by-side columns of
jaxquant.evaluation.method_table.

Qwix runs its own way: a QuantizationRule per setting over the decoder-block Dense layers,
`padded_ptq` where groups do not divide a layer (SmolLM2's 576 inputs), and for GPTQ / AWQ /
SmoothQuant its contrib calibration providers: one jitted calibration pass per window collects
`quant_stats`, then its quantize_params. A setting Qwix cannot run raises; the table reports why.
Qwix 0.1.8's SmoothQuant inference (SqInferenceProvider.dot_general) multiplies the float
activation by the inverse smoothing scale and calls a dequantizing dot: its activations stay in
float, so its SmoothQuant rows are W8A16 with smoothed weights, not W8A8.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

BLOCK_LAYERS = r".*layers_\d+/(attn|mlp)/.*"


@dataclasses.dataclass(frozen=True)
class QwixSetting:
    """weight_qtype ("int4", "int8", ...); tile_size: group size along the contraction axis
    (None: per channel); act_qtype for W8A8; method: rtn | gptq | awq | smoothquant; note: how
    what Qwix runs differs from the row's setting (printed with its perplexity)."""

    weight_qtype: str
    method: str = "rtn"
    tile_size: int | None = None
    act_qtype: str | None = None
    note: str | None = None


def _rule_kw(s: QwixSetting) -> dict:
    kw: dict = {"module_path": BLOCK_LAYERS, "weight_qtype": s.weight_qtype}
    if s.tile_size:
        kw["tile_size"] = s.tile_size
    if s.act_qtype:
        kw["act_qtype"] = s.act_qtype
    return kw


def _calibrate(model, params, provider, calib: np.ndarray) -> Any:
    """quant_stats from one jitted calibration pass per window."""
    import qwix

    cal = qwix.quantize_model(model, provider)
    step = jax.jit(lambda v, t: cal.apply(v, t, mutable=["quant_stats"])[1])
    variables = {"params": params["params"]}
    for window in calib:
        variables = {**variables, **step(variables, jnp.asarray(window[None]))}
    return variables["quant_stats"]


def qwix_quantize(model, params, setting: QwixSetting, calib: np.ndarray
                  ) -> tuple[Callable, Any, float]:
    """(logits_fn(params, tokens), quantized params, seconds to quantize incl. calibration)."""
    import qwix
    from qwix.contrib import awq, gptq, padded_ptq, smooth_quant

    kw = _rule_kw(setting)
    tokens = jnp.asarray(calib[:1])
    start = time.perf_counter()
    calibrated = {
        "gptq": (gptq.GptqRule, gptq.GptqCalibrationProvider, qwix.PtqProvider, gptq.quantize_params),
        "awq": (awq.AwqRule, awq.AwqCalibrationProvider, awq.AwqInferenceProvider, awq.quantize_params),
        "smoothquant": (smooth_quant.SqRule, smooth_quant.SqCalibrationProvider,
                        smooth_quant.SqInferenceProvider, smooth_quant.quantize_params),
    }
    if setting.method in calibrated:
        rule_cls, cal_cls, infer_cls, quantize = calibrated[setting.method]
        stats = _calibrate(model, params, cal_cls([rule_cls(**kw)]), calib)
        # the abstract tree (weights as WithAux) comes from PtqProvider: SqInferenceProvider's
        # dot_general never creates WithAux, so an abstract tree from it quantizes nothing
        ptq_model = qwix.quantize_model(model, qwix.PtqProvider([rule_cls(**kw)]))
        abstract = jax.eval_shape(ptq_model.init, jax.random.key(0), tokens)
        qmodel = qwix.quantize_model(model, infer_cls([rule_cls(**kw)]))
        # quant_stats are keyed like the inner params tree (no "params" level)
        qparams = {"params": quantize(params["params"], abstract["params"], stats)}
    else:
        padded = setting.tile_size is not None
        provider = padded_ptq.PaddedPtqProvider if padded else qwix.PtqProvider
        qmodel = qwix.quantize_model(model, provider([qwix.QuantizationRule(**kw)]))
        abstract = jax.eval_shape(qmodel.init, jax.random.key(0), tokens)
        qparams = (padded_ptq.quantize_params if padded else qwix.quantize_params)(params, abstract)
    jax.block_until_ready(qparams)
    seconds = time.perf_counter() - start
    return (lambda p, t: qmodel.apply(p, t)[0]), qparams, seconds


def qwix_version() -> str:
    from importlib.metadata import version

    return version("qwix")
