"""FP8 (E4M3) weight containers and layouts for the W8A8 kernels.

  qvalue  float8_e4m3fn weights. Layout "kn" (canonical, as jaxquant stores a Dense kernel):
          [K, N]. Layout "nk" (pre-transposed by `prepare_fp8_weights`): [N, K], K-contiguous,
          the operand order Hopper's FP8 tensor-core instructions read natively.
  scale   float32 [N], one per output channel: W[k, n] = qvalue[k, n] * scale[n].
Activations are quantized per token at run time: x[m, :] = xq[m, :] * sx[m] with
sx = max|x[m, :]| / 448 (1 for an all-zero row).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxquant.kernels._common import KernelArgumentError

LAYOUT_KN = "kn"
LAYOUT_NK = "nk"
LAYOUTS = (LAYOUT_KN, LAYOUT_NK)
E4M3_MAX = 448.0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Fp8Weights:
    qvalue: jax.Array
    scale: jax.Array
    layout: str = dataclasses.field(default=LAYOUT_KN, metadata=dict(static=True))

    @property
    def n(self) -> int:
        return int(self.qvalue.shape[1] if self.layout == LAYOUT_KN else self.qvalue.shape[0])

    @property
    def k(self) -> int:
        return int(self.qvalue.shape[0] if self.layout == LAYOUT_KN else self.qvalue.shape[1])


def prepare_fp8_weights(w: Any) -> Fp8Weights:
    """Canonical [K, N] -> layout "nk" ([N, K], K-contiguous). Do this once at quantize time."""
    w = as_fp8_weights(w)
    if w.layout == LAYOUT_NK:
        return w
    return Fp8Weights(jnp.asarray(w.qvalue).T, w.scale, LAYOUT_NK)


def as_fp8_weights(weights: Any) -> Fp8Weights:
    if isinstance(weights, Fp8Weights):
        return weights
    if isinstance(weights, (tuple, list)):
        if len(weights) != 2:
            raise KernelArgumentError(
                f"weights: expected (qvalue, scale), got a sequence of length {len(weights)}"
            )
        return Fp8Weights(weights[0], weights[1])
    if isinstance(weights, dict):
        try:
            return Fp8Weights(weights["qvalue"], weights["scale"], weights.get("layout", LAYOUT_KN))
        except KeyError as e:
            raise KernelArgumentError(f"weights: dict is missing key {e}") from None
    if hasattr(weights, "qvalue") and hasattr(weights, "scale"):
        meta = getattr(weights, "meta", None)
        layout = getattr(meta, "layout", None) or getattr(weights, "layout", LAYOUT_KN)
        if layout == "canonical":
            layout = LAYOUT_KN
        return Fp8Weights(weights.qvalue, weights.scale, layout)
    raise KernelArgumentError(
        f"weights: expected Fp8Weights, (qvalue, scale) or an object with .qvalue/.scale, got "
        f"{type(weights).__name__}"
    )


def validate(x_shape, x_dtype, w: Fp8Weights) -> tuple[int, int, int]:
    if w.layout not in LAYOUTS:
        raise KernelArgumentError(f"weights.layout={w.layout!r} is unknown; expected one of {LAYOUTS}")
    if len(x_shape) < 1:
        raise KernelArgumentError("x must have shape [..., K]; got a scalar")
    if jnp.dtype(x_dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32)):
        raise KernelArgumentError(
            f"x must be bfloat16 (or float16/float32), got {jnp.dtype(x_dtype).name}"
        )
    q = w.qvalue
    if q.dtype != jnp.float8_e4m3fn:
        raise KernelArgumentError(
            f"weights.qvalue must be float8_e4m3fn, got {q.dtype}; quantize with "
            "(w / scale).astype(jnp.float8_e4m3fn)"
        )
    if q.ndim != 2:
        raise KernelArgumentError(f"weights.qvalue must be 2-D, got shape {tuple(q.shape)}")
    K = int(x_shape[-1])
    M = 1
    for d in x_shape[:-1]:
        M *= int(d)
    if w.k != K:
        want = "[K, N]" if w.layout == LAYOUT_KN else "[N, K]"
        raise KernelArgumentError(
            f"weights.qvalue has shape {tuple(q.shape)} (layout {w.layout!r}, {want}) but x has "
            f"K={K}"
        )
    N = w.n
    s = w.scale
    if s.shape != (N,) and s.shape != (1, N):
        raise KernelArgumentError(
            f"weights.scale must be float32 of shape [N] = ({N},) (one per output channel), "
            f"got {tuple(s.shape)}"
        )
    return M, K, N
