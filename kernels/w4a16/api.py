"""Public W4A16 matmul: bf16 activations x int4 group-quantized weights -> bf16."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxquant.kernels import autotune
from jaxquant.kernels._common import KernelArgumentError, UnsupportedShapeError, gpu_info, num_sms
from jaxquant.kernels.w4a16 import config as C
from jaxquant.kernels.w4a16.layouts import (
    LAYOUT_CANONICAL, LAYOUT_NK, Int4Weights, as_int4_weights, validate)
from jaxquant.kernels.w4a16.reference import w4a16_matmul_reference

IMPLEMENTATIONS = (None, "xla", "triton", "mosaic_gpu")
OP = "w4a16"


def triton_supported(M: int, K: int, N: int, group_size: int, layout: str = LAYOUT_CANONICAL) -> str | None:
    """None if the Pallas-Triton kernel handles the call, else the reason it does not."""
    if not C.supports(group_size):
        return f"group_size={group_size} is not a multiple of 32"
    if layout != LAYOUT_CANONICAL:
        return f"layout {layout!r} is not read by the Triton kernel"
    if M * K >= 2**31 or N * K >= 2**32 or M * N >= 2**31:
        return "array too large for 32-bit offsets"
    return None


def mosaic_supported(M: int, K: int, N: int, group_size: int, layout: str = LAYOUT_NK) -> str | None:
    """None if the Mosaic GPU kernel handles the call, else the reason it does not."""
    if layout != LAYOUT_NK:
        return (f"layout {layout!r}: the Mosaic kernel reads layout 'nk' (convert once with "
                "jaxquant.kernels.w4a16.to_nk or jaxquant.inference.to_gpu_layout)")
    from jaxquant.kernels.w4a16.mosaic_gpu import supported

    return supported(M, K, N, group_size)


def _on_hopper() -> bool:
    info = gpu_info()
    return info is not None and info[2] >= 90


def _tuning_inputs(M: int, K: int, N: int, group_size: int, asym: bool, scale_dtype: Any
                   ) -> tuple[jax.Array, Int4Weights, np.ndarray]:
    """Synthetic x [M, K] bf16, canonical weights of a (K, N) layer and the XLA result, for the
    autotuner's correctness check."""
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    xs = jax.random.normal(k1, (M, K), jnp.bfloat16)
    G = -(-K // group_size)
    ws = Int4Weights(
        jax.random.bits(k2, (-(-K // 2), N), jnp.uint8),
        jax.random.uniform(k3, (G, N), jnp.float32, 0.002, 0.02).astype(scale_dtype),
        jnp.full((G, N), 8, jnp.uint8) if asym else None,
    )
    ref = np.asarray(w4a16_matmul_reference(xs, ws, group_size=group_size).astype(jnp.float32))
    return xs, ws, ref


def _pick_config(M, K, N, group_size, w: Int4Weights, x, tune: bool | None, interpret: bool):
    key = autotune.make_key(OP, C.shape_key(M, K, N, group_size, w.asymmetric))
    sms = num_sms()
    if interpret:
        return C.default_config(M, K, N, group_size, sms=sms, on_gpu=False)
    hit = autotune.lookup(key)
    if hit is not None and not (tune is True):
        try:
            cfg = C.W4A16Config.from_dict(hit)
            return cfg.replace(split_k=C.fit_split_k(M, K, N, cfg))
        except (TypeError, ValueError):
            pass
    if tune or (tune is None and autotune.tuning_enabled()):
        from jaxquant.kernels.w4a16.pallas_triton import w4a16_matmul_triton

        xs, ws, ref = _tuning_inputs(M, K, N, group_size, w.asymmetric, w.scale.dtype)

        def build(cfg):
            f = jax.jit(lambda a, b: w4a16_matmul_triton(a, b, group_size=group_size, config=cfg))
            return lambda: f(xs, ws)

        def check(out):
            o = np.asarray(out.astype(jnp.float32))
            return bool(np.linalg.norm(o - ref) <= 2e-2 * np.linalg.norm(ref))

        best = autotune.tune(key, C.candidates(M, K, N, group_size, sms=sms), build, check)
        if best is not None:
            return best
    return C.default_config(M, K, N, group_size, sms=sms)


def _pick_mosaic_config(M, K, N, group_size, w: Int4Weights, tune: bool | None):
    from jaxquant.kernels.w4a16 import mosaic_gpu as mg

    key = autotune.make_key(OP + "_mosaic", C.shape_key(M, K, N, group_size, w.asymmetric))
    hit = autotune.lookup(key)
    if hit is not None and tune is not True:
        try:
            return mg.MosaicConfig.from_dict(hit)
        except (TypeError, ValueError):
            pass
    if tune or (tune is None and autotune.tuning_enabled()):
        from jaxquant.kernels.w4a16.layouts import to_nk

        xs, wc, ref = _tuning_inputs(M, K, N, group_size, w.asymmetric, jnp.bfloat16)
        ws = to_nk(wc, K)

        def build(cfg):
            f = jax.jit(lambda a, b: mg.w4a16_matmul_mosaic(
                a, b.qvalue, b.scale, b.zero_point, group_size=group_size, config=cfg))
            return lambda: f(xs, ws)

        def check(out):
            o = np.asarray(out.astype(jnp.float32))
            return bool(np.linalg.norm(o - ref) <= 2e-2 * np.linalg.norm(ref))

        best = autotune.tune(key, mg.candidates(M, K, N, group_size, sms=num_sms()), build, check)
        if best is not None:
            return best
    return mg.default_config(M, K, N, group_size, sms=num_sms())


def w4a16_matmul(
    x: jax.Array,
    weights: Any,
    *,
    group_size: int,
    implementation: str | None = None,
    config: C.W4A16Config | None = None,
    tune: bool | None = None,
    interpret: bool | None = None,
) -> jax.Array:
    """x [..., K] bf16 @ W (int4, group-wise along K) -> [..., N] bf16 (float32 accumulation).

    weights: Int4Weights, (qvalue, scale[, zero_point]), or an object with those attributes
      (jaxquant QArray); canonical layout, see kernels/w4a16/layouts.py.
    implementation: None (Pallas-Triton on an NVIDIA GPU when the shape is supported, XLA
      otherwise; for layout "nk" the Mosaic GPU kernel on Hopper), "xla" (dequantize + dot),
      "triton" (the Pallas-Triton kernel, canonical layout; interpret mode off GPU unless
      interpret=False), "mosaic_gpu" (the Pallas Mosaic GPU kernel, layout "nk", Hopper).
    config: a W4A16Config (Triton) or MosaicConfig (Mosaic GPU) to force; otherwise the
      autotune cache, then heuristics.
    tune: True sweeps candidate configs for this shape now (cached); None follows
      JAXQUANT_AUTOTUNE.
    """
    if implementation not in IMPLEMENTATIONS:
        raise KernelArgumentError(
            f"implementation={implementation!r}; use one of {IMPLEMENTATIONS}"
        )
    w = as_int4_weights(weights)
    x = jnp.asarray(x)
    M, K, N, _ = validate(x.shape, x.dtype, w, group_size)
    lead = x.shape[:-1]
    x2 = x.reshape(M, K)

    impl = implementation
    if impl is None:
        if w.layout == LAYOUT_NK:
            ok = _on_hopper() and mosaic_supported(M, K, N, group_size) is None
            impl = "mosaic_gpu" if ok else "xla"
        else:
            on_gpu = gpu_info() is not None and gpu_info()[2] >= 80
            ok = on_gpu and triton_supported(M, K, N, group_size, w.layout) is None
            impl = "triton" if ok else "xla"
    if M == 0 or N == 0:
        return jnp.zeros((*lead, N), x.dtype)
    if impl == "xla":
        out = w4a16_matmul_reference(x2, w, group_size=group_size)
        return out.reshape(*lead, N)

    if impl == "mosaic_gpu":
        reason = mosaic_supported(M, K, N, group_size, w.layout)
        if reason is None and not _on_hopper():
            reason = "the Mosaic GPU kernel needs an NVIDIA Hopper GPU (sm_90)"
        if reason is not None:
            raise UnsupportedShapeError(
                f"w4a16_matmul(implementation='mosaic_gpu'): {reason}; use implementation=None "
                "or 'xla'"
            )
        from jaxquant.kernels.w4a16 import mosaic_gpu as mg

        cfg = config if config is not None else _pick_mosaic_config(M, K, N, group_size, w, tune)
        out = mg.w4a16_matmul_mosaic(x2, w.qvalue, w.scale, w.zero_point, group_size=group_size,
                                     config=cfg)
        return out.reshape(*lead, N)
    reason = triton_supported(M, K, N, group_size, w.layout)
    if reason is not None:
        raise UnsupportedShapeError(
            f"w4a16_matmul(implementation='triton'): {reason}; use implementation=None or 'xla'"
        )
    if interpret is None:
        interpret = gpu_info() is None
    from jaxquant.kernels.w4a16.pallas_triton import w4a16_matmul_triton

    cfg = config if config is not None else _pick_config(M, K, N, group_size, w, x2, tune, interpret)
    out = w4a16_matmul_triton(x2, w, group_size=group_size, config=cfg, interpret=interpret)
    return out.reshape(*lead, N)
