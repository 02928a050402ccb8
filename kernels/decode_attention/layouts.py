"""Storage of a quantized KV cache: the format spec and the per-token codec.

A cache row is one token of one KV head, x [..., D] (D = head_dim). It is stored as
  codes  [..., Dp]  int8 (int8), float8_e4m3fn (fp8), uint8 (int4: Dp = D / 2, two codes per
                    byte, channel j in the low nibble and channel j + D/2 in the high nibble, so
                    the kernel reads the two halves of the head as two contiguous tiles),
                    or the float values themselves (bf16 / float32: no scales);
  scales [..., G]   float32, one per group of `group_size` channels (G = D / group_size;
                    group_size None = D: one scale per head and token).
Symmetric: scale = amax / qmax (127 for int8, 7 for int4, 448 for E4M3); codes =
round-to-nearest-even(x / scale) clipped to [-qmax, qmax] (fp8: a saturating cast). An all-zero
group stores scale 0 and codes 0 (exact zeros). Non-finite values make their group's scale
non-finite, so only that token/head/group dequantizes to NaN (as the float cache would carry
the NaN/Inf into attention). Every token is quantized on its own, so writing a prompt at once
or token by token stores the same codes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
from jax import Array

from jaxquant.errors import JaxquantError

# name -> (storage dtype, qmax; 0 for float storage)
KV_FORMATS: dict[str, tuple[Any, float]] = {
    "float32": (jnp.float32, 0.0),
    "bf16": (jnp.bfloat16, 0.0),
    "int8": (jnp.int8, 127.0),
    "fp8": (jnp.float8_e4m3fn, 448.0),
    "int4": (jnp.uint8, 7.0),
}
CLI_FORMATS = ("bf16", "int8", "fp8", "int4")


@dataclasses.dataclass(frozen=True)
class KVCacheSpec:
    """How K and V are stored: format in KV_FORMATS; group_size (channels per scale, dividing
    head_dim; None = one scale per head and token). Float formats take no group_size."""

    format: str
    group_size: int | None = None

    def __post_init__(self) -> None:
        if self.format not in KV_FORMATS:
            raise JaxquantError(f"kv_cache format {self.format!r} is unknown; use one of "
                                f"{', '.join(KV_FORMATS)}")
        if self.group_size is not None:
            if not self.quantized:
                raise JaxquantError(f"kv_cache group_size={self.group_size} applies to int8, "
                                    f"fp8 and int4 caches, not {self.format}; drop it")
            if not isinstance(self.group_size, int) or self.group_size < 1:
                raise JaxquantError(f"kv_cache group_size={self.group_size!r} must be a "
                                    "positive int (or None: one scale per head and token)")

    @property
    def quantized(self) -> bool:
        return KV_FORMATS[self.format][1] > 0

    @property
    def dtype(self) -> Any:
        return KV_FORMATS[self.format][0]

    @property
    def qmax(self) -> float:
        return KV_FORMATS[self.format][1]

    def groups(self, head_dim: int) -> int:
        """Scales per head and token, G; raises when group_size does not divide head_dim."""
        g = self.group_size or head_dim
        if head_dim % g:
            divisors = [d for d in range(1, head_dim + 1) if head_dim % d == 0]
            raise JaxquantError(f"kv_cache group_size={g} does not divide head_dim={head_dim}; "
                                f"use one of {divisors}")
        return head_dim // g

    def packed_dim(self, head_dim: int) -> int:
        """Stored code columns Dp per row (head_dim / 2 for int4)."""
        if self.format == "int4":
            if head_dim % 2:
                raise JaxquantError(f"an int4 kv_cache needs an even head_dim, got {head_dim}")
            return head_dim // 2
        return head_dim

    def bytes_per_token(self, n_layers: int, n_kv_heads: int, head_dim: int) -> int:
        """Bytes of K and V of one token over all layers (codes + scales)."""
        row = self.packed_dim(head_dim) * jnp.dtype(self.dtype).itemsize
        if self.quantized:
            row += 4 * self.groups(head_dim)
        return 2 * n_layers * n_kv_heads * row


def as_spec(kv: "KVCacheSpec | str | None", default_dtype: Any = jnp.float32) -> KVCacheSpec:
    """A spec from a spec, a format name, or None (float storage in default_dtype)."""
    if isinstance(kv, KVCacheSpec):
        return kv
    if kv is None:
        name = {jnp.dtype(jnp.bfloat16): "bf16"}.get(jnp.dtype(default_dtype), "float32")
        return KVCacheSpec(name)
    if isinstance(kv, str):
        return KVCacheSpec({"bfloat16": "bf16", "float8_e4m3fn": "fp8", "f32": "float32"}
                           .get(kv, kv))
    raise JaxquantError(f"kv_cache must be a KVCacheSpec, a format name or None, not "
                        f"{type(kv).__name__}")


def quantize_rows(x: Array, spec: KVCacheSpec) -> tuple[Array, Array | None]:
    """x [..., D] float -> (codes [..., Dp] spec.dtype, scales float32 [..., G] or None)."""
    if not spec.quantized:
        return x.astype(spec.dtype), None
    d = x.shape[-1]
    g = spec.groups(d)
    spec.packed_dim(d)
    xg = x.astype(jnp.float32).reshape(*x.shape[:-1], g, d // g)
    amax = jnp.max(jnp.abs(xg), axis=-1, keepdims=True)
    scale = amax / spec.qmax
    safe = jnp.where(scale == 0, 1.0, scale)
    y = jnp.clip(xg / safe, -spec.qmax, spec.qmax).reshape(x.shape)
    if spec.format == "fp8":
        codes = y.astype(jnp.float8_e4m3fn)
    else:
        codes = jnp.round(y).astype(jnp.int8)
        if spec.format == "int4":
            half = d // 2
            lo = codes[..., :half].astype(jnp.uint8) & 0xF
            hi = codes[..., half:].astype(jnp.uint8) & 0xF
            codes = lo | (hi << 4)
    return codes, scale[..., 0]


def unpack_int4(codes: Array) -> Array:
    """uint8 [..., D/2] -> int8 [..., D] in [-8, 7] (low nibbles first, then high nibbles)."""
    lo = (codes & 0xF).astype(jnp.int8)
    hi = (codes >> 4).astype(jnp.int8)
    both = jnp.concatenate([lo, hi], axis=-1)
    return jnp.where(both >= 8, both - 16, both)


def dequantize_rows(codes: Array, scales: Array | None, spec: KVCacheSpec,
                    dtype: Any = jnp.float32) -> Array:
    """(codes [..., Dp], scales [..., G]) -> x [..., D] in dtype (codes x scale in float32)."""
    if not spec.quantized:
        return codes.astype(dtype)
    vals = unpack_int4(codes) if spec.format == "int4" else codes
    vals = vals.astype(jnp.float32)
    d, g = vals.shape[-1], scales.shape[-1]
    out = vals.reshape(*vals.shape[:-1], g, d // g) * scales[..., None].astype(jnp.float32)
    return out.reshape(vals.shape).astype(dtype)
