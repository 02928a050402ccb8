"""Routes weight-only quantized dots to the Pallas kernels in jaxquant.kernels when they apply."""

from __future__ import annotations

from typing import Any

from jax import Array

from jaxquant.core.qarray import QArray
from jaxquant.inference import dispatch


def try_weight_only_kernel(
    x: Array, w: QArray, dims: Any, out_dtype: Any
) -> tuple[Array, str] | None:
    """(result, path name) from a Pallas kernel, or None when none applies (XLA fallback)."""
    if dispatch.current().backend == "xla":
        return None
    return None
