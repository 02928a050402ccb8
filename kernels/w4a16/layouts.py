"""Int4 weight containers and layouts for the W4A16 kernels.

Canonical layout (the contract of jaxquant/formats/packing.py). A Dense weight W of logical
shape (K, N), contraction axis 0, quantized group-wise along K with group size g:
  qvalue      uint8 [ceil(K/2), N]; qvalue[i, n] = code[2i, n] | (code[2i+1, n] << 4)
              (even k in the low nibble; an odd K is padded with one zero code).
  symmetric   codes are two's-complement nibbles, value in [-8, 7]; W = value * scale[k // g].
  asymmetric  codes are unsigned nibbles in [0, 15], zero_point uint8 [ceil(K/g), N];
              W = (code - zero_point[k // g]) * scale[k // g].
  scale       [ceil(K/g), N], bfloat16 or float32 (a ragged last group is allowed).

The kernels read the canonical layout directly (LAYOUT_CANONICAL = "canonical"): the packed
tile stays N-contiguous (16-byte loads along N) and the even/odd K interleave is undone on
the small activation tile instead of on the weights, so no pre-shuffle is needed.

Layout "nk" (LAYOUT_NK, read by the Mosaic GPU kernel, made once by `to_nk`):
  qvalue      int4 [N, K]: row n holds output channel n's K codes, K-contiguous (XLA packs
              int4 two per byte, so the bytes equal the canonical array transposed). Codes are
              two's complement; asymmetric codes are stored minus 8 (code ^ 0x8).
  scale       bfloat16 [ceil(K/g), N].
  zero_point  asymmetric only: bfloat16 [ceil(K/g), N] = zero_point - 8 (exact), so that
              W = (qvalue - zero_point) * scale in both cases.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxquant.kernels._common import KernelArgumentError

LAYOUT_CANONICAL = "canonical"
LAYOUT_NK = "nk"
LAYOUTS = (LAYOUT_CANONICAL, LAYOUT_NK)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Int4Weights:
    """Packed int4 weights of one (K, N) matrix; see the module docstring.

    zero_point None means symmetric (two's-complement codes). `layout` names the packing of
    `qvalue` (static; the value a quantized array's metadata carries)."""

    qvalue: jax.Array
    scale: jax.Array
    zero_point: jax.Array | None = None
    layout: str = dataclasses.field(default=LAYOUT_CANONICAL, metadata=dict(static=True))

    @property
    def asymmetric(self) -> bool:
        return self.zero_point is not None


def as_int4_weights(weights: Any) -> Int4Weights:
    """Int4Weights from an Int4Weights, a (qvalue, scale[, zero_point]) tuple, a dict with
    those keys, or any object with .qvalue/.scale/.zero_point attributes (e.g. jaxquant's
    QArray, whose meta.layout names the layout)."""
    if isinstance(weights, Int4Weights):
        return weights
    if isinstance(weights, (tuple, list)):
        if len(weights) not in (2, 3):
            raise KernelArgumentError(
                "weights: expected (qvalue, scale) or (qvalue, scale, zero_point), got a "
                f"sequence of length {len(weights)}"
            )
        q, s, *z = weights
        return Int4Weights(q, s, z[0] if z else None)
    if isinstance(weights, dict):
        try:
            return Int4Weights(
                weights["qvalue"], weights["scale"], weights.get("zero_point"),
                weights.get("layout", LAYOUT_CANONICAL),
            )
        except KeyError as e:
            raise KernelArgumentError(f"weights: dict is missing key {e}") from None
    if hasattr(weights, "qvalue") and hasattr(weights, "scale"):
        meta = getattr(weights, "meta", None)
        layout = getattr(meta, "layout", None) or getattr(weights, "layout", LAYOUT_CANONICAL)
        return Int4Weights(
            weights.qvalue, weights.scale, getattr(weights, "zero_point", None), layout
        )
    raise KernelArgumentError(
        f"weights: expected Int4Weights, (qvalue, scale[, zero_point]) or an object with "
        f".qvalue/.scale attributes, got {type(weights).__name__}"
    )


def validate(x_shape: tuple[int, ...], x_dtype: Any, w: Int4Weights, group_size: int) -> tuple[int, int, int, int]:
    """Checks shapes/dtypes; returns (M, K, N, G). Raises KernelArgumentError naming the
    argument and the fix."""
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size <= 0:
        raise KernelArgumentError(f"group_size must be a positive int, got {group_size!r}")
    if len(x_shape) < 1:
        raise KernelArgumentError("x must have shape [..., K]; got a scalar")
    if jnp.dtype(x_dtype) != jnp.bfloat16:
        raise KernelArgumentError(
            f"x must be bfloat16 (W4A16), got {jnp.dtype(x_dtype).name}; cast it with "
            "x.astype(jnp.bfloat16)"
        )
    if w.layout not in LAYOUTS:
        raise KernelArgumentError(f"weights.layout={w.layout!r} is unknown; expected one of {LAYOUTS}")
    K = int(x_shape[-1])
    M = 1
    for d in x_shape[:-1]:
        M *= int(d)
    if w.layout == LAYOUT_NK:
        return (M, K) + _validate_nk(w, K, group_size)
    q = w.qvalue
    if q.dtype != jnp.uint8:
        raise KernelArgumentError(
            f"weights.qvalue must be uint8 (two 4-bit codes per byte), got {q.dtype}; pack "
            "codes with jaxquant.formats.packing.pack_nibbles(codes, axis=0)"
        )
    if q.ndim != 2:
        raise KernelArgumentError(f"weights.qvalue must be 2-D [ceil(K/2), N], got shape {q.shape}")
    kp, N = (int(d) for d in q.shape)
    if kp != -(-K // 2):
        raise KernelArgumentError(
            f"weights.qvalue has {kp} packed rows but x has K={K} (expected ceil(K/2)="
            f"{-(-K // 2)}); the weight must be packed along its contraction axis 0"
        )
    G = -(-K // group_size)
    s = w.scale
    if s.ndim != 2 or tuple(s.shape) != (G, N):
        raise KernelArgumentError(
            f"weights.scale must have shape [ceil(K/group_size), N] = {(G, N)}, got "
            f"{tuple(s.shape)} (K={K}, group_size={group_size})"
        )
    if s.dtype not in (jnp.bfloat16, jnp.float32, jnp.float16):
        raise KernelArgumentError(f"weights.scale must be bfloat16/float32, got {s.dtype}")
    if w.zero_point is not None:
        z = w.zero_point
        if z.dtype != jnp.uint8 or tuple(z.shape) != (G, N):
            raise KernelArgumentError(
                f"weights.zero_point must be uint8 of shape {(G, N)}, got {z.dtype} "
                f"{tuple(z.shape)}"
            )
    return M, K, N, G


def _validate_nk(w: Int4Weights, K: int, group_size: int) -> tuple[int, int]:
    q = w.qvalue
    if q.dtype != jnp.int4 or q.ndim != 2 or int(q.shape[1]) != K:
        raise KernelArgumentError(
            f"weights.qvalue (layout 'nk') must be int4 [N, K={K}], got {q.dtype} "
            f"{tuple(q.shape)}; make it with jaxquant.kernels.w4a16.to_nk(weights, K)"
        )
    N = int(q.shape[0])
    G = -(-K // group_size)
    for name, a in (("scale", w.scale), ("zero_point", w.zero_point)):
        if a is not None and (a.dtype != jnp.bfloat16 or tuple(a.shape) != (G, N)):
            raise KernelArgumentError(
                f"weights.{name} (layout 'nk') must be bfloat16 [ceil(K/group_size), N] = "
                f"{(G, N)}, got {a.dtype} {tuple(a.shape)}"
            )
    return N, G


def to_nk(w: Int4Weights, k: int) -> Int4Weights:
    """Canonical Int4Weights of a (K, N) weight -> layout "nk" (one pass; do it once when the
    model is loaded for GPU inference, not per call). K must be even."""
    if w.layout == LAYOUT_NK:
        return w
    if w.layout != LAYOUT_CANONICAL:
        raise KernelArgumentError(f"weights.layout={w.layout!r}: to_nk converts 'canonical' weights")
    if k % 2:
        raise KernelArgumentError(f"to_nk: K={k} must be even (the nk layout packs K pairs)")
    q = w.qvalue[: k // 2]
    lo = (q & 0xF).astype(jnp.int8)
    hi = (q >> 4).astype(jnp.int8)
    codes = jnp.stack([lo, hi], axis=1).reshape(k, q.shape[1])  # [K, N], nibbles 0..15
    if w.zero_point is not None:
        codes = codes ^ 8  # unsigned u -> the two's-complement nibble of u - 8
    codes = jnp.where(codes >= 8, codes - 16, codes)
    zp = None
    if w.zero_point is not None:
        zp = (w.zero_point.astype(jnp.float32) - 8.0).astype(jnp.bfloat16)
    return Int4Weights(codes.T.astype(jnp.int4), w.scale.astype(jnp.bfloat16), zp, LAYOUT_NK)
