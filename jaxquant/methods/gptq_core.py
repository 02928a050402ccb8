"""GPTQ (Frantar et al., 2022) as a pure array function.

Weights are in Flax layout W [K, N] (K inputs, contracted; N outputs); H = sum_t x_t x_t^T is the
[K, K] Hessian of the layer's inputs. Input rows of W are quantized one at a time; the rounding
error of row i is spread over the rows not yet quantized through the upper Cholesky factor U of
H^-1 (err_i = (w_i - q_i) / U_ii, W[j] -= U_ij err_i for j > i), lazily in blocks of `block_size`
rows. Group scales are computed when the sweep reaches a group's first row, from the current
(error-compensated) weights of that group. With act_order, rows are visited by descending
H_ii; groups stay contiguous in the original order (the stored format's groups), each group's
scale fixed when the sweep first touches one of its rows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import Array

from jaxquant.core.qarray import QArray
from jaxquant.core.quantize import scales_for_range
from jaxquant.core.scales import Scales
from jaxquant.core.spec import ArraySpec
from jaxquant.errors import FormatError, JaxquantError
from jaxquant.formats.packing import pack_nibbles
from jaxquant.formats.registry import get_format


def check_gptq_spec(spec: ArraySpec, shape: tuple[int, ...]) -> None:
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


def inverse_hessian_factor(h: Array, damp: float) -> tuple[Array, float]:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1. Dampening grows x10 (up to 1.0)
    until H is positive definite; returns (U, damp used)."""
    k = h.shape[0]
    mean_diag = jnp.mean(jnp.diag(h))
    for d in (damp, damp * 10, damp * 100, 1.0):
        hd = h + d * mean_diag * jnp.eye(k, dtype=h.dtype)
        lower = jnp.linalg.cholesky(hd)
        if bool(jnp.all(jnp.isfinite(lower))):
            hinv = jax.scipy.linalg.cho_solve((lower, True), jnp.eye(k, dtype=h.dtype))
            upper = jnp.linalg.cholesky(hinv).T
            if bool(jnp.all(jnp.isfinite(upper))):
                return upper, d
    raise JaxquantError("GPTQ: the Hessian is not positive definite even with dampening 1.0; "
                        "the calibration activations are degenerate (all zero or NaN?)")


@functools.partial(jax.jit, static_argnames=("spec", "block_size"))
def _sweep(w: Array, u: Array, perm: Array, spec: ArraySpec, block_size: int):
    """Quantize rows of w (already permuted; perm[i] = original index of row i)."""
    fmt = get_format(spec.format)
    k, n = w.shape
    g = spec.block_shape[0]
    n_groups = -(-k // g)  # a ragged last group is allowed
    group_of = perm // g  # group of each permuted row

    def group_scales(wcur: Array, grp: Array) -> tuple[Array, Array]:
        mask = (group_of == grp)[:, None]
        lo = jnp.min(jnp.where(mask, wcur, jnp.inf), axis=0, keepdims=True)
        hi = jnp.max(jnp.where(mask, wcur, -jnp.inf), axis=0, keepdims=True)
        sc = scales_for_range(fmt, spec, lo, hi)
        zp = sc.zero_point if sc.zero_point is not None else jnp.zeros_like(lo, jnp.uint8)
        return sc.effective[0], zp[0].astype(jnp.float32)

    def quant_row(row: Array, s: Array, zp: Array) -> tuple[Array, Array]:
        safe = jnp.where(s > 0, s, 1.0)
        codes = fmt.codec.encode(row / safe + zp)
        return codes, (fmt.codec.decode(codes) - zp) * s

    eff0 = jnp.zeros((n_groups, n), jnp.float32)
    zp0 = jnp.zeros((n_groups, n), jnp.float32)
    done0 = jnp.zeros((n_groups,), bool)
    codes0 = jnp.zeros((k, n), fmt.codec.storage_dtype)

    def block_body(b: Array, carry):
        w, eff, zps, done, codes = carry
        start = b * block_size
        wb = jax.lax.dynamic_slice(w, (start, 0), (block_size, n))
        ub = jax.lax.dynamic_slice(u, (start, start), (block_size, block_size))

        def row_body(j: Array, inner):
            wb, errs, w, eff, zps, done, codes = inner
            i = start + j
            grp = group_of[i]
            # the group's scale is fixed the first time the sweep reaches one of its rows
            def fresh_scales(_):
                return group_scales(jax.lax.dynamic_update_slice(w, wb, (start, 0)), grp)

            s_new, z_new = jax.lax.cond(
                done[grp], lambda _: (eff[grp], zps[grp]), fresh_scales, None
            )
            eff = eff.at[grp].set(s_new)
            zps = zps.at[grp].set(z_new)
            done = done.at[grp].set(True)
            row = wb[j]
            c, deq = quant_row(row, eff[grp], zps[grp])
            codes = codes.at[i].set(c)
            err = (row - deq) / ub[j, j]
            later = (jnp.arange(block_size) > j)[:, None]
            wb = wb - jnp.where(later, ub[j][:, None] * err[None, :], 0.0)
            errs = errs.at[j].set(err)
            return wb, errs, w, eff, zps, done, codes

        errs0 = jnp.zeros((block_size, n), jnp.float32)
        wb, errs, w, eff, zps, done, codes = jax.lax.fori_loop(
            0, block_size, row_body, (wb, errs0, w, eff, zps, done, codes)
        )
        # lazy update of all rows after this block: W[rest] -= U[block, rest]^T err
        u_rows = jax.lax.dynamic_slice(u, (start, 0), (block_size, k))
        after = (jnp.arange(k) >= start + block_size)[:, None]
        w = w - jnp.where(after, u_rows.T @ errs, 0.0)
        w = jax.lax.dynamic_update_slice(w, wb, (start, 0))
        return w, eff, zps, done, codes

    _, eff, zps, _, codes = jax.lax.fori_loop(
        0, k // block_size, block_body, (w, eff0, zp0, done0, codes0)
    )
    return codes, eff, zps


def gptq_quantize(
    w: Array,
    hessian: Array,
    spec: ArraySpec,
    *,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
) -> QArray:
    """GPTQ-quantize W [K, N] (f32/bf16) given H [K, K] (f32) into a QArray laid out like RTN's.

    spec: per-channel or per-group (along K) INT/FP8/MX scheme. block_size must divide K (it is
    reduced to the largest divisor of K not above it otherwise).
    """
    check_gptq_spec(spec, tuple(w.shape))
    k, n = w.shape
    if hessian.shape != (k, k):
        raise JaxquantError(f"GPTQ: Hessian shape {hessian.shape} does not match K={k}")
    fmt = get_format(spec.format)
    w32 = jnp.asarray(w, jnp.float32)
    h = jnp.asarray(hessian, jnp.float32)
    dead = jnp.diag(h) == 0
    h = h + jnp.diag(dead.astype(jnp.float32))
    w32 = jnp.where(dead[:, None], 0.0, w32)
    perm = jnp.argsort(-jnp.diag(h)) if act_order else jnp.arange(k)
    u, _ = inverse_hessian_factor(h[perm][:, perm], damp)
    bs = max(d for d in range(1, min(block_size, k) + 1) if k % d == 0)
    codes_p, eff, zps = _sweep(w32[perm], u, perm, spec, bs)
    codes = jnp.zeros_like(codes_p).at[perm].set(codes_p)
    stored_dtype = jnp.dtype(spec.scale_dtype)
    if fmt.scale_kind == "e8m0":
        from jaxquant.formats.floating import e8m0_encode

        _, e = jnp.frexp(eff)
        stored = e8m0_encode(e.astype(jnp.int32) - 1)
    else:
        stored = eff.astype(stored_dtype)  # exact: eff was computed in the stored dtype
    zero_point = zps.astype(jnp.uint8) if fmt.asymmetric else None
    sc = Scales(stored, zero_point, eff)
    qvalue = pack_nibbles(codes, 0) if fmt.codec.packed else codes
    from jaxquant.core.qarray import QMeta

    meta = QMeta(spec.format, (k, n), jnp.dtype(w.dtype).name, spec.block_shape, 0,
                 spec.granularity)
    return QArray(qvalue, sc.stored, sc.zero_point, meta)
