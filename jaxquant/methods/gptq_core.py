"""GPTQ (Frantar et al., 2022) as a pure array function.

Weights are in Flax layout W [K, N] (K inputs, contracted; N outputs); H = sum_t x_t x_t^T is the
[K, K] Hessian of the layer's inputs. Input rows of W are quantized one at a time; the rounding
error of row i is spread over the rows not yet quantized through the upper Cholesky factor U of
H^-1 (err_i = (w_i - q_i) / U_ii, W[j] -= U_ij err_i for j > i), lazily in blocks of `block_size`
rows (the reference implementation's order of operations, IST-DASLab/gptq).

Scales. Per-group (along K) scales without act_order are computed when the sweep reaches a
group's first row, from the current (error-compensated) weights of the whole group: sweep blocks
are aligned with groups (the block size divides the group size or is a multiple of it, and K is
zero-padded with independent rows to a whole number of blocks, which leaves the result for the
real rows unchanged), so every row of the group has received all earlier updates at that moment.
With act_order rows are visited by descending H_ii; the stored format keeps contiguous groups in
the original order, so their scales are fixed up front from the original weights (the reference
`static_groups`). Per-channel scales come from the original weights (as in the reference). The
range of each group follows the scheme's clipping (min-max, percentile, or MSE search).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from jaxquant.calibration.clipping import block_range
from jaxquant.core import blocks
from jaxquant.core.qarray import QArray, QMeta
from jaxquant.core.quantize import scales_for_range
from jaxquant.core.spec import ArraySpec
from jaxquant.errors import FormatError, JaxquantError
from jaxquant.formats.floating import e8m0_encode
from jaxquant.formats.packing import pack_nibbles
from jaxquant.formats.registry import get_format

_HI = jax.lax.Precision.HIGHEST


def check_gptq_spec(spec: ArraySpec, shape: tuple[int, ...]) -> None:
    """FormatError unless GPTQ can produce `spec` for a weight of `shape`."""
    fmt = get_format(spec.format)
    if len(shape) != 2 or spec.axis != 0:
        raise FormatError(f"GPTQ needs a 2-D weight [K, N] contracted on axis 0, got shape "
                          f"{shape} with axis {spec.axis}")
    if fmt.scale_kind == "nvfp4" or spec.double_quant:
        raise FormatError(f"GPTQ cannot apply to {spec.format}{' (double quant)' if spec.double_quant else ''}: "
                          "its scales depend on the whole tensor; use an INT, FP8 or MX format")
    if spec.granularity not in ("group", "channel") or spec.block_shape[1] != 1:
        raise FormatError(f"GPTQ needs per-channel or per-group (along K) scales, got "
                          f"{spec.granularity} {spec.block_shape}; per-tensor and 2-D block scales "
                          "would change as the sweep updates the weights")


def _upper_inverse_factor(h: Array, d: Array) -> Array:
    """Upper U with U^T U = (H + d mean(diag H) I)^-1, from one Cholesky factorization: with P
    the order reversal and P Hd P = L L^T, Hd^-1 = (P L^-T P)(P L^-1 P) and U = P L^-1 P (upper,
    positive diagonal: the unique factor). Non-finite where Hd is not positive definite."""
    k = h.shape[0]
    eye = jnp.eye(k, dtype=h.dtype)
    hd = h + d * jnp.mean(jnp.diag(h)) * eye
    lower = jnp.linalg.cholesky(hd[::-1, ::-1])
    return jax.scipy.linalg.solve_triangular(lower, eye, lower=True)[::-1, ::-1]


def _damped_factor(h: Array, damps: tuple[float, ...]) -> tuple[Array, Array]:
    """(U, index of the dampening used) for the first of `damps` at which H + d mean(diag H) I
    is positive definite; the index is len(damps) if none is (traced: no host round trip)."""
    levels = jnp.asarray(damps, jnp.float32)

    def body(carry):
        i, _ = carry
        return i + 1, _upper_inverse_factor(h, levels[i])

    def cond(carry):
        i, u = carry
        return (i == 0) | ((i < len(damps)) & ~jnp.all(jnp.isfinite(u)))

    i, u = jax.lax.while_loop(cond, body, (jnp.int32(0), jnp.full_like(h, jnp.nan)))
    return u, jnp.where(jnp.all(jnp.isfinite(u)), i - 1, len(damps))


def damping_levels(damp: float) -> tuple[float, ...]:
    """The dampening fractions tried in order: damp, x10, x100, then 1.0."""
    return (damp, damp * 10, damp * 100, 1.0)


_NOT_PD = ("GPTQ: the Hessian is not positive definite even with dampening 1.0; the calibration "
           "activations are degenerate (all zero or NaN?)")


def inverse_hessian_factor(h: Array, damp: float) -> tuple[Array, float]:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1. Dampening grows x10 (up to 1.0)
    until H is positive definite; returns (U, damp used)."""
    damps = damping_levels(damp)
    u, i = jax.jit(_damped_factor, static_argnums=1)(jnp.asarray(h, jnp.float32), damps)
    if int(i) == len(damps):
        raise JaxquantError(_NOT_PD)
    return u, damps[int(i)]


def sweep_block_size(block_size: int, group: int) -> int:
    """The lazy-update block size actually used: `block_size` adjusted so that blocks and groups
    align (a divisor of the group size, or a multiple of it, not above block_size)."""
    if group >= block_size:
        return max(d for d in range(1, block_size + 1) if group % d == 0)
    return (block_size // group) * group


def _range_scales(fmt, spec: ArraySpec, xb: Array) -> tuple[Array, Array]:
    """Blocked weights -> (effective scale, zero-point as f32), grid-shaped, under spec's clipping."""
    scales_fn = functools.partial(scales_for_range, fmt, spec)
    lo, hi = block_range(xb, fmt, spec.clipping, scales_fn)
    sc = scales_fn(lo, hi)
    zp = sc.zero_point if sc.zero_point is not None else jnp.zeros_like(lo, jnp.uint8)
    return sc.effective, zp.astype(jnp.float32)


def _sweep(w: Array, u: Array, row_group: Array, eff: Array, zps: Array, spec: ArraySpec,
           bs: int, dynamic: bool) -> tuple[Array, Array, Array]:
    """Quantize the rows of w f32 [Kp, N] in order (already permuted and zero-padded to a
    multiple of bs). u f32 [Kp, Kp]: upper factor; row_group int32 [Kp]: stored group of each
    row; eff, zps f32 [Gp, N]: group scales (dynamic: overwritten at each group's first row).
    Returns (codes [Kp, N], eff, zps)."""
    fmt = get_format(spec.format)
    kp, n = w.shape
    g = spec.block_shape[0]

    def slab_scales(slab: Array) -> tuple[Array, Array]:
        s, z = _range_scales(fmt, spec, blocks.to_blocks(slab, (g, 1)))
        return s[0], z[0]

    def set_group(grp, slab, eff, zps):
        s, z = slab_scales(slab)
        return eff.at[grp].set(s), zps.at[grp].set(z)

    def block_body(b: Array, carry):
        w, eff, zps, codes = carry
        start = b * bs
        if dynamic and g >= bs:  # a group starts at this block's first row
            eff, zps = jax.lax.cond(
                start % g == 0,
                lambda e, z: set_group(start // g, jax.lax.dynamic_slice(w, (start, 0), (g, n)), e, z),
                lambda e, z: (e, z), eff, zps)
        wb = jax.lax.dynamic_slice(w, (start, 0), (bs, n))
        ub = jax.lax.dynamic_slice(u, (start, start), (bs, bs))

        def row_body(j: Array, inner):
            wb, errs, qb, eff, zps = inner
            if dynamic and g < bs:  # a group starts inside this block
                eff, zps = jax.lax.cond(
                    j % g == 0,
                    lambda e, z: set_group((start + j) // g,
                                           jax.lax.dynamic_slice(wb, (j, 0), (g, n)), e, z),
                    lambda e, z: (e, z), eff, zps)
            grp = row_group[start + j]
            s, z = eff[grp], zps[grp]
            row = wb[j]
            c = fmt.codec.encode(row / jnp.where(s > 0, s, 1.0) + z)
            deq = (fmt.codec.decode(c) - z) * s
            err = (row - deq) / ub[j, j]
            wb = wb - ub[j][:, None] * err[None, :]  # U is upper: only rows >= j change
            return wb, errs.at[j].set(err), qb.at[j].set(c), eff, zps

        init = (wb, jnp.zeros((bs, n), jnp.float32), jnp.zeros((bs, n), codes.dtype), eff, zps)
        _, errs, qb, eff, zps = jax.lax.fori_loop(0, bs, row_body, init)
        # lazy update of the later rows: W[j] -= sum_{i in block} U_ij err_i (rows of this block
        # are done; U's rows before the block are zero there)
        u_rows = jax.lax.dynamic_slice(u, (start, 0), (bs, kp))
        w = w - jnp.dot(u_rows.T, errs, precision=_HI)
        return w, eff, zps, jax.lax.dynamic_update_slice(codes, qb, (start, 0))

    codes0 = jnp.zeros((kp, n), fmt.codec.storage_dtype)
    _, eff, zps, codes = jax.lax.fori_loop(0, kp // bs, block_body, (w, eff, zps, codes0))
    return codes, eff, zps


class GPTQFactor(NamedTuple):
    """What GPTQ needs from a Hessian, shared by every layer that reads the same input.

    perm: int32 [K] row visiting order (descending H_ii with act_order, else 0..K-1).
    u:    f32 [K, K] upper factor of the dampened inverse Hessian, in the permuted order.
    dead: bool [K] inputs that were never nonzero (H_ii = 0): their weight rows become 0.
    """

    perm: Array
    u: Array
    dead: Array


@functools.partial(jax.jit, static_argnums=(1, 2))
def _factor(h: Array, act_order: bool, damps: tuple[float, ...]) -> tuple[GPTQFactor, Array]:
    k = h.shape[0]
    dead = jnp.diag(h) == 0
    h = h + jnp.diag(dead.astype(jnp.float32))
    perm = jnp.argsort(-jnp.diag(h)) if act_order else jnp.arange(k)
    u, damp_index = _damped_factor(h[perm][:, perm], damps)
    return GPTQFactor(perm.astype(jnp.int32), u, dead), damp_index


def gptq_factor(hessian: Array, *, damp: float = 0.01, act_order: bool = False) -> GPTQFactor:
    """The GPTQFactor of H [K, K] (f32): dampening `damp` (a fraction of mean(diag H), grown
    x10 up to 1.0 until H is positive definite), rows by descending H_ii with act_order."""
    h = jnp.asarray(hessian, jnp.float32)
    if h.ndim != 2 or h.shape[0] != h.shape[1]:
        raise JaxquantError(f"GPTQ: the Hessian must be square [K, K], got shape {h.shape}")
    factor, damp_index = _factor(h, bool(act_order), damping_levels(damp))
    if int(damp_index) == len(damping_levels(damp)):
        raise JaxquantError(_NOT_PD)
    return factor


def gptq_quantize(
    w: Array,
    hessian: Array | None,
    spec: ArraySpec,
    *,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
    factor: GPTQFactor | None = None,
) -> QArray:
    """GPTQ-quantize W [K, N] (f32/bf16) given H [K, K] (f32) into a QArray laid out like RTN's.

    spec: per-channel or per-group (along K) INT/FP8/MX scheme; its clipping picks each group's
    range. block_size: rows per lazy update (adjusted to align with the groups, see
    sweep_block_size). damp: fraction of mean(diag H) added to the diagonal (grown x10 until H
    is positive definite). act_order: visit rows by descending H_ii (static group scales).
    factor: gptq_factor(H, damp=..., act_order=...) computed once for layers sharing an input
    (then hessian may be None and damp unused; pass the act_order the factor was made with).
    """
    check_gptq_spec(spec, tuple(w.shape))
    k, n = w.shape
    if factor is None:
        if hessian is None or tuple(hessian.shape) != (k, k):
            shape = None if hessian is None else tuple(hessian.shape)
            raise JaxquantError(f"GPTQ: Hessian shape {shape} does not match K={k}")
        factor = gptq_factor(hessian, damp=damp, act_order=act_order)
    elif factor.u.shape != (k, k):
        raise JaxquantError(f"GPTQ: factor of a {factor.u.shape[0]}-input Hessian for K={k}")
    if block_size < 1:
        raise JaxquantError(f"GPTQ: block_size={block_size} must be >= 1 (128 is typical)")
    g = spec.block_shape[0]
    dynamic = spec.granularity == "group" and not act_order
    bs = sweep_block_size(block_size, g) if dynamic else min(block_size, k)
    kp = -(-k // bs) * bs
    if dynamic:
        kp = -(-kp // g) * g if g >= bs else kp
    qvalue, stored, zero_point = _gptq(jnp.asarray(w), factor, spec, bs, kp, dynamic)
    meta = QMeta(spec.format, (k, n), jnp.dtype(w.dtype).name, spec.block_shape, 0,
                 spec.granularity)
    return QArray(qvalue, stored, zero_point, meta)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _gptq(w: Array, factor: GPTQFactor, spec: ArraySpec, bs: int, kp: int, dynamic: bool
          ) -> tuple[Array, Array, Array | None]:
    """The sweep and the packing in one compiled program: (packed codes, stored scales,
    zero-points or None)."""
    fmt = get_format(spec.format)
    k, n = w.shape
    g = spec.block_shape[0]
    perm, u, dead = factor
    w32 = jnp.where(dead[:, None], 0.0, w.astype(jnp.float32))
    # padded rows are zero weights with an independent unit Hessian: U stays block diagonal
    u = jnp.zeros((kp, kp), jnp.float32).at[:k, :k].set(u).at[k:, k:].set(jnp.eye(kp - k))
    wp = jnp.zeros((kp, n), jnp.float32).at[:k].set(w32[perm])
    if dynamic:
        n_groups = kp // g
        row_group = jnp.arange(kp, dtype=jnp.int32) // g
        eff = jnp.zeros((n_groups, n), jnp.float32)
        zps = jnp.zeros((n_groups, n), jnp.float32)
    else:  # static scales from the original weights, in the stored layout
        eff, zps = _range_scales(fmt, spec, blocks.to_blocks(w32, spec.block_shape))
        row_group = jnp.zeros((kp,), jnp.int32).at[:k].set((perm // g).astype(jnp.int32))
    codes_p, eff, zps = _sweep(wp, u, row_group, eff, zps, spec, bs, dynamic)
    n_stored = -(-k // g)
    eff, zps = eff[:n_stored], zps[:n_stored]
    codes = jnp.zeros((k, n), codes_p.dtype).at[perm].set(codes_p[:k])
    if fmt.scale_kind == "e8m0":
        _, e = jnp.frexp(eff)
        stored = e8m0_encode(e.astype(jnp.int32) - 1)
    else:
        stored = eff.astype(jnp.dtype(spec.scale_dtype))  # exact: eff came from the stored dtype
    zero_point = zps.astype(jnp.uint8) if fmt.asymmetric else None
    qvalue = pack_nibbles(codes, 0) if fmt.codec.packed else codes
    return qvalue, stored, zero_point
