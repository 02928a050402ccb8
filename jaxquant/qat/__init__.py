"""Quantization-aware training and QLoRA.

    qat = jaxquant.qat.prepare_qat(params, "w4a16", learn_scales=True)
    logits = jaxquant.qat.qat_apply(model, qat, tokens)        # train this with optax
    qparams = jaxquant.qat.convert(qat)                         # real QArrays, same forward
"""

from jaxquant.qat.forward import qat_apply
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
]
