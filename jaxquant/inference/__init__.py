"""Running quantized parameters through a Flax model's own forward.

    qparams = jaxquant.quantize(params, "w4a16")
    with jaxquant.intercept():                       # Linen and NNX
        logits = jax.jit(model.apply)(qparams, tokens)

Every intercepted layer calls jaxquant.inference.qdot.quantized_dot_general. On Hopper GPUs,
`qparams = to_gpu_layout(qparams)` (once, after quantizing or restoring) puts 4-bit weights in
the layout the Mosaic GPU W4A16 kernel reads; `to_canonical` undoes it before saving.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from flax import linen as nn

from jaxquant.inference import dispatch, linen, nnx
from jaxquant.inference.dispatch import DispatchReport
from jaxquant.inference.gpu_layout import to_canonical, to_gpu_layout
from jaxquant.inference.qdot import quantized_dot_general


@contextlib.contextmanager
def intercept(
    backend: dispatch.Backend = "auto", allow_low_precision: bool = True, report: bool = False
) -> Iterator[DispatchReport | None]:
    """Run Linen and NNX layers holding QArray weights through the quantized dot.

    backend: "auto" | "xla" | "pallas" (see jaxquant.inference.dispatch). report=True yields a
    DispatchReport listing the path each quantized layer took while tracing. Must be active
    while the model is traced (inside or around the jitted function's first call).
    """
    with dispatch.settings(backend, allow_low_precision, report) as rep:
        with nn.intercept_methods(linen.interceptor), nnx.intercept():
            yield rep


__all__ = ["DispatchReport", "dispatch", "intercept", "quantized_dot_general", "to_canonical",
           "to_gpu_layout"]
