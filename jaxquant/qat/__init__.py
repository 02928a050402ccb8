"""Quantization-aware training and QLoRA.

    apply_fn, qat = jaxquant.qat.qat_forward(model, params, "w4a16", learn_scales=True)
    logits = apply_fn(qat, tokens)                   # differentiable: train `qat` with optax
    qparams = jaxquant.qat.convert(qat)              # real QArrays, the same forward
"""

from jaxquant.qat.forward import qat_apply, qat_forward
from jaxquant.qat.lsq import lsq_fake_quant, lsq_weight
from jaxquant.qat.params import QATWeight, convert, materialize, prepare_qat
from jaxquant.qat.ste import fake_quant_activation, fake_quant_ste

__all__ = [
    "QATWeight",
    "convert",
    "fake_quant_activation",
    "fake_quant_ste",
    "lsq_fake_quant",
    "lsq_weight",
    "materialize",
    "prepare_qat",
    "qat_apply",
    "qat_forward",
]
