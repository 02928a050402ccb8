"""Public decode attention over a (quantized) KV cache: one new query token per sequence."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxquant.kernels._common import KernelArgumentError, UnsupportedShapeError, gpu_info, num_sms
from jaxquant.kernels.decode_attention import config as C
from jaxquant.kernels.decode_attention.layouts import KVCacheSpec
from jaxquant.kernels.decode_attention.reference import decode_attention_reference

IMPLEMENTATIONS = (None, "xla", "triton")


def triton_supported(spec: KVCacheSpec, head_dim: int, n_heads: int, n_kv_heads: int) -> str | None:
    """None if the Pallas-Triton kernel tiles this head, else the reason it cannot."""
    from jaxquant.kernels.decode_attention.pallas_triton import segment_width

    c = segment_width(spec, head_dim)
    if c < 16 or c & (c - 1):
        what = "head_dim / 2 (int4 codes per byte row)" if spec.format == "int4" and \
            c == head_dim // 2 else "the channel group" if c < head_dim else "head_dim"
        return (f"head_dim={head_dim}: the kernel reads {what} as tiles of {c} columns, which must "
                "be a power of two >= 16 (head_dim 32/64/128/256; int4 needs head_dim >= 32)")
    if n_heads // n_kv_heads > 128:
        return f"{n_heads // n_kv_heads} query heads per KV head (at most 128)"
    return None


def _check(q, k, v, lengths, k_scale, v_scale, spec: KVCacheSpec, layer: int | None) -> None:
    nd = 4 if layer is None else 5
    if q.ndim != 3:
        raise KernelArgumentError(f"q must be [batch, n_heads, head_dim], got shape {q.shape}")
    B, H, D = q.shape
    if k.ndim != nd or v.shape != k.shape:
        raise KernelArgumentError(
            f"k and v must both be [{'' if layer is None else 'n_layers, '}batch, n_kv_heads, "
            f"max_len, {spec.packed_dim(D)}] (layer={layer}), got {k.shape} and {v.shape}")
    if layer is not None and not 0 <= layer < k.shape[0]:
        raise KernelArgumentError(f"layer={layer} is outside the cache's {k.shape[0]} layers")
    Hkv, S, Dp = k.shape[-3:]
    if k.shape[-4] != B or Dp != spec.packed_dim(D) or H % Hkv:
        raise KernelArgumentError(
            f"cache shape {k.shape} does not fit q {q.shape} with a {spec.format} cache: need "
            f"batch {B}, n_kv_heads dividing {H}, {spec.packed_dim(D)} stored columns")
    if jnp.dtype(k.dtype) != jnp.dtype(spec.dtype):
        raise KernelArgumentError(f"a {spec.format} cache stores {jnp.dtype(spec.dtype).name} "
                                  f"codes, got {k.dtype}")
    if spec.quantized:
        want = (*k.shape[:-2], spec.groups(D), S)
        for name, s in (("k_scale", k_scale), ("v_scale", v_scale)):
            if s is None or s.shape != want:
                raise KernelArgumentError(f"{name} must be float32 {want} for a {spec.format} "
                                          f"cache, got {None if s is None else s.shape}")
    if lengths.shape != (B,):
        raise KernelArgumentError(f"lengths must be int32 [{B}], got shape {lengths.shape}")
    try:
        longest = int(jnp.max(lengths))
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError):
        return  # traced: the model checks the cache length before jit
    if longest > S:
        raise KernelArgumentError(f"lengths go up to {longest} but the cache holds {S} positions;"
                                  " allocate a longer cache (init_cache(..., max_len=...))")


def decode_attention(q: jax.Array, k: jax.Array, v: jax.Array, lengths: jax.Array, *,
                     spec: KVCacheSpec, k_scale: jax.Array | None = None,
                     v_scale: jax.Array | None = None, layer: int | None = None,
                     sm_scale: float | None = None, implementation: str | None = None,
                     config: C.DecodeAttentionConfig | None = None,
                     interpret: bool | None = None) -> jax.Array:
    """Attention of one new query per sequence over its first lengths[b] cache positions.

    q [B, H, D] (bf16 or f32); k, v codes [B, Hkv, S, Dp] in spec.dtype, or the stacked
    [L, B, Hkv, S, Dp] of every layer with `layer` picking one (no per-layer copy);
    k_scale, v_scale float32 [(L,) B, Hkv, G, S] for int8/fp8/int4; lengths int32 [B].
    Returns [B, H, D] in q.dtype; scores, softmax and accumulation in float32.
    implementation: None (the Pallas-Triton kernel on an NVIDIA GPU when it tiles the head,
      XLA otherwise), "xla" (dequantize + einsum), "triton" (the kernel; interpret mode off GPU
      unless interpret=False).
    """
    if implementation not in IMPLEMENTATIONS:
        raise KernelArgumentError(f"implementation={implementation!r}; use one of "
                                  f"{IMPLEMENTATIONS}")
    _check(q, k, v, lengths, k_scale, v_scale, spec, layer)
    B, H, D = q.shape
    Hkv, S = k.shape[-3], k.shape[-2]
    sm_scale = float(D) ** -0.5 if sm_scale is None else float(sm_scale)
    reason = triton_supported(spec, D, H, Hkv)
    impl = implementation
    if impl is None:
        on_gpu = gpu_info() is not None and gpu_info()[2] >= 80
        impl = "triton" if on_gpu and reason is None else "xla"
    if impl == "xla":
        if layer is not None:
            k, v = k[layer], v[layer]
            k_scale = None if k_scale is None else k_scale[layer]
            v_scale = None if v_scale is None else v_scale[layer]
        return decode_attention_reference(q, k, v, lengths, k_scale, v_scale, spec=spec,
                                          sm_scale=sm_scale)
    if reason is not None:
        raise UnsupportedShapeError(f"decode_attention(implementation='triton'): {reason}; use "
                                    "implementation=None or 'xla'")
    from jaxquant.kernels.decode_attention.pallas_triton import decode_attention_triton

    cfg = config or C.default_config(B, Hkv, S, sms=num_sms())
    return decode_attention_triton(q, k, v, lengths, k_scale, v_scale, spec=spec, layer=layer,
                                   sm_scale=sm_scale, config=cfg,
                                   interpret=gpu_info() is None if interpret is None else interpret)
