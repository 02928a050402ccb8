"""AWQ (Lin et al., 2023): activation-aware per-input-channel scaling, as pure array functions.

Layout: activations X [T, K] (T tokens, K channels), weights in Flax layout W_i [K, N_i] (K
inputs, contracted on axis 0; N_i outputs). All weights in one call read the same X (e.g. q/k/v
after the attention norm), so they share one scale vector s [K].

Scale search (awq_search). With xbar_k = mean_t |X[t, k]| and alpha in the grid
{0, 1/grid, ..., (grid-1)/grid}:

    s(alpha) = xbar ** alpha                                    (duo_scaling: / wbar ** (1 - alpha))
    s       <- max(s, 1e-4 * max(s)),   s <- s / sqrt(max(s) * min(s))
    err(alpha) = sum_i || X W_i - (X / s) Q(W_i * s[:, None]) ||_F^2
               = sum_i || X D_i ||_F^2,   D_i = W_i - Q(W_i * s[:, None]) / s[:, None]

with Q round-to-nearest under the weight's ArraySpec (jaxquant.core.quantize.fake_quantize).
alpha = 0 gives s = 1, plain RTN, so errors[0] is the RTN error and the chosen alpha (argmin;
ties go to the smaller alpha) is never worse than RTN on the calibration sample (with
duo_scaling, grid point 0 is s = 1 too rather than 1 / wbar). wbar_k is the mean over all output
columns of |W| divided by its block's absmax (AutoAWQ's duo scaling). err is computed as
||X D||^2 when T <= K, else as sum(D * (G D)) with the Gram matrix G = X^T X [K, K] (cost K^2 N
instead of T K N per grid point); awq_search_from_stats takes (xbar, G) directly so that a caller
can accumulate them over calibration batches.

Clip search (awq_clip_search, AutoAWQ's auto_clip). On the already scaled weight W' = W * s (read
by X' = X / s), every quantization block b gets a ratio r_b in {1, 1 - 1/grid, ..., 1 - max_shrink}:
W' is clipped to [r_b lo_b, r_b hi_b] (lo_b, hi_b the block's min and max) before RTN, with r_b
minimizing the block's share of the output error, sum_t (X'[t, rows(b)] D[rows(b), n])^2 summed
over the block's columns n (blocks are scored independently through the block-diagonal Gram
X'^T X' over each group of K rows).

Folding (the float network is unchanged; x / s is never materialized):
    scale_weights(W, s)               W * s[:, None]       the layers that read x
    fold_into_norm(g, s)              g / s                an RMSNorm/LayerNorm scale producing x
    fold_into_linear_outputs(Wp, s)   Wp / s[None, :]      a linear Wp [K_prev, K] producing x
                                                           (its bias, if any: fold_into_norm(b, s))
Where no op precedes x, QArray.input_smooth = s makes the dot divide x at run time.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import Array

from jaxquant.calibration.clipping import minmax_range
from jaxquant.core import blocks
from jaxquant.core.quantize import fake_quantize
from jaxquant.core.spec import ArraySpec
from jaxquant.errors import FormatError, JaxquantError

_HI = jax.lax.Precision.HIGHEST
SCALE_FLOOR = 1e-4  # s >= SCALE_FLOOR * max(s) before normalization
# grid points scored together (lax.map batch): 4 was 20-40 % faster than 1 (and than 10 or the
# whole grid) for SmolLM2's layer shapes on a 2-core CPU, at 4x one point's intermediates
GRID_BATCH = 4
# awq_search(screen=s > 1) first scores every s-th output column (an estimate, scaled to all
# columns), then rescores RTN and the SCREEN_KEEP best alphas on every column: with s = 4, 9
# column-passes of work instead of 20 for the default grid. Off by default: on SmolLM2 int4 g64
# (2026-12-02) screen=4 made the search 1.7x faster but raised perplexity 37.89 -> 39.02
SCREEN = 1
SCREEN_KEEP = 3
# awq_search(refine=True) scores every REFINE_STEP-th alpha, then the REFINE_STEP - 1 on each side
# of the best of those: 11 grid points instead of 20. It finds the grid's argmin whenever the
# error is unimodal along the grid; on SmolLM2 (2026-12-03, 120 searches per setting) it chose
# the full grid's alpha in 120 of 120 searches at int4 g128 and 118 of 120 at int4_full g64.
REFINE_STEP = 4
REFINE = False


class AWQResult(NamedTuple):
    """Output of awq_search (a pytree: jittable).

    scales: f32 [K], the chosen s (fold 1 / s into what produces x, scale_weights(W, s) the rest).
    alpha:  f32 scalar, the chosen grid exponent (0.0: s = 1, plain RTN won).
    errors: f32 [grid], err(alpha) at alpha = i / grid; errors[0] is the RTN error.
    """

    scales: Array
    alpha: Array
    errors: Array


# ----------------------------------------------------------------------------------- checks


def _as_2d(name: str, w, k: int | None, fn: str, ref: str) -> None:
    shape = tuple(getattr(w, "shape", ()))
    if len(shape) != 2:
        raise JaxquantError(f"{fn}: {name} has shape {shape}; expected a 2-D weight [K, N] in Flax "
                            "layout (inputs on axis 0); reshape or transpose it first")
    if k is not None and shape[0] != k:
        raise JaxquantError(
            f"{fn}: {name} has shape {shape} but {ref} has K={k} channels; weights must be "
            f"[K={k}, N] in Flax layout (a PyTorch [N, K] weight needs .T)")
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise JaxquantError(f"{fn}: {name} has dtype {w.dtype}; pass float weights")


def _check_x(fn: str, x) -> int:
    shape = tuple(getattr(x, "shape", ()))
    if len(shape) != 2:
        raise JaxquantError(f"{fn}: x has shape {shape}; expected activations [T, K]; flatten "
                            "batch and sequence axes first (x.reshape(-1, x.shape[-1]))")
    if shape[0] == 0:
        raise JaxquantError(f"{fn}: x has no tokens (shape {shape}); pass calibration activations")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise JaxquantError(f"{fn}: x has dtype {x.dtype}; pass float activations")
    return shape[1]


def _check_vector(fn: str, name: str, v, k: int, ref: str) -> None:
    shape = tuple(getattr(v, "shape", ()))
    if shape != (k,):
        raise JaxquantError(f"{fn}: {name} has shape {shape}; expected [{k}] (one entry per "
                            f"channel of {ref})")


def check_spec(fn: str, name: str, spec, shape: tuple[int, ...]) -> None:
    """FormatError unless `spec` is an ArraySpec resolved for a 2-D weight of `shape`."""
    if not isinstance(spec, ArraySpec):
        raise FormatError(
            f"{fn}: spec for {name} is {type(spec).__name__}; pass an ArraySpec, e.g. "
            f"WeightScheme('int4', group_size=128).resolve({shape}, 0, '{name}')")
    if spec.axis != 0 or len(spec.block_shape) != 2:
        raise FormatError(
            f"{fn}: spec for {name} has axis={spec.axis}, block_shape={spec.block_shape}; AWQ "
            f"needs a 2-D weight [K, N] contracted on axis 0: resolve the scheme with "
            f"axis 0 for shape {shape}")
    bad = any(b < 1 or b > s for b, s in zip(spec.block_shape, shape))
    if bad or (spec.granularity == "tensor" and tuple(spec.block_shape) != tuple(shape)):
        raise FormatError(
            f"{fn}: spec for {name} has block_shape={spec.block_shape}, which was resolved for "
            f"another shape than {shape}; resolve the scheme for this weight's shape")


def _specs(fn: str, spec, weights: Sequence[Array]) -> tuple[ArraySpec, ...]:
    if not isinstance(spec, (list, tuple)):
        specs = (spec,) * len(weights)  # check_spec names a non-ArraySpec below
    else:
        specs = tuple(spec)
        if len(specs) != len(weights):
            raise JaxquantError(f"{fn}: {len(specs)} specs for {len(weights)} weights; pass one "
                                "ArraySpec for all or one per weight")
    for i, (w, sp) in enumerate(zip(weights, specs)):
        check_spec(fn, f"weights[{i}]", sp, tuple(w.shape))
    return specs


def check_weights(fn: str, weights, k: int, ref: str) -> tuple[Array, ...]:
    if hasattr(weights, "ndim"):
        raise JaxquantError(f"{fn}: weights must be a list of [K, N_i] arrays; wrap a single "
                            "weight as [w]")
    weights = tuple(weights)
    if not weights:
        raise JaxquantError(f"{fn}: weights is empty; pass the layers that read x")
    for i, w in enumerate(weights):
        _as_2d(f"weights[{i}]", w, k, fn, ref)
    return weights


def _check_grid(fn: str, grid) -> None:
    if not isinstance(grid, int) or isinstance(grid, bool) or grid < 1:
        raise JaxquantError(f"{fn}: grid={grid!r}; pass a positive int (20 is typical)")


def _check_refine(fn: str, refine) -> bool:
    if not isinstance(refine, bool):
        raise JaxquantError(f"{fn}: refine={refine!r}; pass True (coarse-to-fine alpha search) "
                            "or False (every alpha of the grid)")
    return refine


# ------------------------------------------------------------------------------ scale search


def _check_screen(fn: str, screen) -> None:
    if isinstance(screen, bool) or not isinstance(screen, int) or screen < 1:
        raise JaxquantError(f"{fn}: screen={screen!r}; pass an int >= 1 (1: score every alpha on "
                            f"every output column, the default)")


def normalize_scales(s: Array) -> Array:
    """f32 [K] >= 0 -> clipped to >= 1e-4 * max(s) and divided by sqrt(max * min). All-zero or
    non-finite input gives ones."""
    smax = jnp.max(s)
    ok = (smax > 0) & jnp.isfinite(smax)
    s = jnp.where(ok, jnp.maximum(s, SCALE_FLOOR * smax), 1.0)
    return s / jnp.sqrt(jnp.max(s) * jnp.min(s))


def _block_normalized_absmean(weights: tuple[Array, ...], specs: tuple[ArraySpec, ...]) -> Array:
    """wbar [K]: mean over all output columns of |W_i| / (its block's absmax + 1e-6)."""
    total = 0.0
    cols = 0
    for w, sp in zip(weights, specs):
        a = jnp.abs(w.astype(jnp.float32))
        ab = blocks.to_blocks(a, sp.block_shape)
        amax = jnp.max(ab, axis=blocks.inner_axes(2), keepdims=True)
        total = total + jnp.sum(blocks.from_blocks(ab / (amax + 1e-6), a.shape), axis=1)
        cols += w.shape[1]
    return total / cols


def _scales_at(alpha: Array, xbar: Array, wbar: Array | None) -> Array:
    s = jnp.power(xbar, alpha)
    if wbar is not None:
        s = s / (jnp.power(wbar, 1.0 - alpha) + 1e-4)
    s = normalize_scales(s)
    return jnp.where(alpha == 0, jnp.ones_like(s), s)  # grid point 0 is exactly RTN


def _sq_error(delta: Array, operand: Array, use_gram: bool) -> Array:
    """||X D||_F^2 from X [T, K] (use_gram False) or G = X^T X [K, K] (use_gram True)."""
    if use_gram:
        return jnp.sum(delta * jnp.dot(operand, delta, precision=_HI))
    y = jnp.dot(operand, delta, precision=_HI)
    return jnp.sum(y * y)


def _quant_delta(w32: Array, s: Array, spec: ArraySpec) -> Array:
    """D = W - Q(W * s) / s, f32 [K, N]."""
    return w32 - fake_quantize(w32 * s[:, None], spec) / s[:, None]


def _screened(w: Array, spec: ArraySpec, screen: int) -> Array:
    """Every screen-th output column of w [K, N] where columns quantize independently (block
    width 1) and at least 16 remain; else w itself."""
    if screen > 1 and spec.block_shape[1] == 1 and w.shape[1] >= 16 * screen:
        return w[:, ::screen]
    return w


def _batch(points: int) -> int:
    """The divisor of `points` nearest GRID_BATCH (lax.map compiles no remainder step)."""
    return min((d for d in range(1, points + 1) if points % d == 0),
               key=lambda d: (abs(d - GRID_BATCH), d))


def _score(err_fn, alphas: Array, picked: Array, errors: Array) -> Array:
    """errors [grid] with entries `picked` (int [P]) set to err_fn at those alphas."""
    batch = _batch(picked.shape[0])
    return errors.at[picked].set(jax.lax.map(err_fn, alphas[picked], batch_size=batch))


def _finite(e: Array) -> Array:
    return jnp.where(jnp.isnan(e), jnp.inf, e)


def _grid_errors(err_fn, alphas: Array, refine: bool) -> Array:
    """err_fn over the grid: every alpha, or (refine, grid > 2 REFINE_STEP + 3) every
    REFINE_STEP-th then the REFINE_STEP - 1 on each side of their best; NaN where not scored."""
    grid = alphas.shape[0]
    if not refine or grid <= 2 * REFINE_STEP + 3:
        return jax.lax.map(err_fn, alphas, batch_size=GRID_BATCH)
    coarse = jnp.arange(0, grid, REFINE_STEP)
    errors = _score(err_fn, alphas, coarse, jnp.full((grid,), jnp.nan, jnp.float32))
    best = coarse[jnp.argmin(_finite(errors[coarse]))]
    offsets = jnp.array([d for d in range(1 - REFINE_STEP, REFINE_STEP) if d], jnp.int32)
    return _score(err_fn, alphas, jnp.clip(best + offsets, 0, grid - 1), errors)


@functools.partial(jax.jit, static_argnames=("specs", "grid", "duo_scaling", "use_gram", "screen",
                                             "refine"))
def _search(xbar, operand, weights, specs, grid, duo_scaling, use_gram, screen, refine):
    w32 = tuple(w.astype(jnp.float32) for w in weights)
    xbar = jnp.maximum(xbar.astype(jnp.float32), 0.0)
    wbar = _block_normalized_absmean(w32, specs) if duo_scaling else None
    alphas = jnp.arange(grid, dtype=jnp.float32) / grid

    def error_at(ws):
        def err(alpha):
            s = _scales_at(alpha, xbar, wbar)
            return sum(_sq_error(_quant_delta(w, s, sp), operand, use_gram) * (n / w.shape[1])
                       for w, sp, n in zip(ws, specs, (w.shape[1] for w in w32)))
        return err

    screen = screen if grid > SCREEN_KEEP + 1 else 1
    subset = tuple(_screened(w, sp, screen) for w, sp in zip(w32, specs))
    errors = _grid_errors(error_at(subset), alphas, refine)
    if all(a is b for a, b in zip(subset, w32)):  # nothing screened: errors are exact
        best = jnp.argmin(_finite(errors))
    else:  # rescore RTN (alpha 0) and the screen's best SCREEN_KEEP on every column
        rest = jnp.argsort(_finite(errors[1:]), stable=True)[:SCREEN_KEEP] + 1
        picked = jnp.concatenate([jnp.zeros((1,), rest.dtype), rest])
        errors = _score(error_at(w32), alphas, picked, errors)
        best = picked[jnp.argmin(_finite(errors[picked]))]
    alpha = alphas[best]
    return AWQResult(_scales_at(alpha, xbar, wbar), alpha, errors)


def awq_search(
    x: Array,
    weights: Sequence[Array],
    spec: ArraySpec | Sequence[ArraySpec],
    *,
    grid: int = 20,
    duo_scaling: bool = False,
    screen: int = SCREEN,
    refine: bool = REFINE,
) -> AWQResult:
    """Search AWQ's per-input-channel scales for the layers `weights` that all read x.

    x:        [T, K] float activations (valid tokens only: drop padding rows first).
    weights:  list of [K, N_i] float weights (Flax layout).
    spec:     the ArraySpec of the final quantization (one for all weights, or one per weight),
              e.g. WeightScheme("int4", group_size=128).resolve(w.shape, 0, name).
    grid:     number of alphas, i / grid for i in 0..grid-1 (alpha = 0: plain RTN).
    duo_scaling: s = xbar^alpha / wbar^(1 - alpha) (AutoAWQ's duo scaling) instead of xbar^alpha.
    screen:   1 (default): score the whole grid on every output column. s > 1: score it on
              every s-th column first (weights whose columns quantize independently, with >= 16
              screened columns), then rescore alpha 0 (RTN) and the SCREEN_KEEP best on every
              column and choose among those (faster, approximate).
    refine:   False (default): score every alpha of the grid. True: every REFINE_STEP-th alpha,
              then the REFINE_STEP - 1 on each side of their best (11 of 20 points; the grid's
              argmin whenever the error is unimodal along it).
    Returns AWQResult(scales f32 [K], alpha f32 scalar, errors f32 [grid]: exact where scored
    on every column, which always includes alpha 0 and the chosen alpha, elsewhere the screen's
    estimate, NaN at alphas refine skipped). Jittable (spec, grid, duo_scaling, screen and
    refine static).
    """
    fn = "awq_search"
    k = _check_x(fn, x)
    weights = check_weights(fn, weights, k, f"x {tuple(x.shape)}")
    specs = _specs(fn, spec, weights)
    _check_grid(fn, grid)
    _check_screen(fn, screen)
    x32 = x.astype(jnp.float32)
    xbar = jnp.mean(jnp.abs(x32), axis=0)
    use_gram = x.shape[0] > k
    operand = jnp.dot(x32.T, x32, precision=_HI) if use_gram else x32
    return _search(xbar, operand, weights, specs, grid, bool(duo_scaling), use_gram, screen,
                   _check_refine(fn, refine))


def awq_search_from_stats(
    x_absmean: Array,
    gram: Array,
    weights: Sequence[Array],
    spec: ArraySpec | Sequence[ArraySpec],
    *,
    grid: int = 20,
    duo_scaling: bool = False,
    screen: int = SCREEN,
    refine: bool = REFINE,
) -> AWQResult:
    """awq_search from accumulated statistics instead of the activations themselves.

    x_absmean: f32 [K], mean_t |x[t, k]| over the calibration tokens.
    gram:      f32 [K, K], sum_t x_t x_t^T (any positive multiple: only the argmin matters, but
               errors scale with it).
    Other arguments and the result as in awq_search.
    """
    fn = "awq_search_from_stats"
    shape = tuple(getattr(x_absmean, "shape", ()))
    if len(shape) != 1 or shape[0] < 1:
        raise JaxquantError(f"{fn}: x_absmean has shape {shape}; expected [K] (mean |x| per "
                            "input channel)")
    k = shape[0]
    if tuple(getattr(gram, "shape", ())) != (k, k):
        raise JaxquantError(f"{fn}: gram has shape {tuple(getattr(gram, 'shape', ()))}; expected "
                            f"[{k}, {k}] (x^T x over the tokens) to match x_absmean [{k}]")
    weights = check_weights(fn, weights, k, f"x_absmean [{k}]")
    specs = _specs(fn, spec, weights)
    _check_grid(fn, grid)
    _check_screen(fn, screen)
    return _search(jnp.asarray(x_absmean, jnp.float32), jnp.asarray(gram, jnp.float32), weights,
                   specs, grid, bool(duo_scaling), True, screen, _check_refine(fn, refine))


# ------------------------------------------------------------------------------- clip search


def _block_bounds(w32: Array, spec: ArraySpec) -> tuple[Array, Array]:
    """Per-block (min, max) of w, grid shape (as quantize_array's min-max range)."""
    return minmax_range(blocks.to_blocks(w32, spec.block_shape))


def _clip_blocks(w32: Array, lo: Array, hi: Array, ratio: Array, spec: ArraySpec) -> Array:
    """w clipped to [ratio * lo, ratio * hi] per block; ratio scalar or grid-shaped."""
    wb = blocks.to_blocks(w32, spec.block_shape)
    clipped = jnp.clip(wb, blocks.expand(lo * ratio), blocks.expand(hi * ratio))
    return blocks.from_blocks(clipped, w32.shape)


def clip_ratios(grid: int, max_shrink: float) -> Array:
    """The candidate ratios 1, 1 - 1/grid, ..., 1 - max_shrink (f32)."""
    n = int(round(max_shrink * grid))
    return 1.0 - jnp.arange(n + 1, dtype=jnp.float32) / grid


@functools.partial(jax.jit, static_argnames=("spec", "grid", "max_shrink"))
def _clip_search(x, w, spec, grid, max_shrink):
    x32 = x.astype(jnp.float32)
    w32 = w.astype(jnp.float32)
    k, n = w32.shape
    b0, b1 = spec.block_shape
    g0, g1 = blocks.grid_shape((k, n), (b0, b1))
    # block-diagonal Gram of x over each group of b0 input rows: [g0, b0, b0]
    xg = jnp.pad(x32, ((0, 0), (0, g0 * b0 - k))).reshape(x32.shape[0], g0, b0)
    gram = jnp.einsum("tgi,tgj->gij", xg, xg, precision=_HI)
    lo, hi = _block_bounds(w32, spec)

    def block_errors(ratio):
        delta = w32 - fake_quantize(_clip_blocks(w32, lo, hi, ratio, spec), spec)
        dg = jnp.pad(delta, ((0, g0 * b0 - k), (0, 0))).reshape(g0, b0, n)
        if g0 == 1:  # one block along K (per channel): a plain matmul, 2-3x faster on CPU
            y = jnp.dot(gram[0], dg[0], precision=_HI)[None]
        else:
            y = jnp.einsum("gij,gjn->gin", gram, dg, precision=_HI)
        e = jnp.sum(dg * y, axis=1)  # [g0, n]
        e = jnp.pad(e, ((0, 0), (0, g1 * b1 - n))).reshape(g0, g1, b1)
        return jnp.sum(e, axis=2)  # [g0, g1]

    ratios = clip_ratios(grid, max_shrink)
    errs = jax.lax.map(block_errors, ratios, batch_size=GRID_BATCH)  # [R, g0, g1]
    best = jnp.argmin(jnp.where(jnp.isnan(errs), jnp.inf, errs), axis=0)  # ties: larger ratio
    return ratios[best]


def awq_clip_search(
    x: Array, w_scaled: Array, spec: ArraySpec, *, grid: int = 20, max_shrink: float = 0.5
) -> Array:
    """Per-block clip ratios for one (already AWQ-scaled) weight, as AutoAWQ's auto_clip.

    x:        [T, K] activations this weight reads, in the scaled space: x / s when
              w_scaled = scale_weights(w, s).
    w_scaled: [K, N] float weight.
    spec:     its ArraySpec; the ratios have its scale grid shape, ceil(K / B0) x ceil(N / B1)
              ([K / g, N] for group-g scales, [1, N] per channel).
    grid, max_shrink: candidates 1, 1 - 1/grid, ..., 1 - max_shrink (0 <= max_shrink < 1).
    Returns f32 ratios in [1 - max_shrink, 1]; ratio 1 (no clipping) wins ties. Apply them with
    apply_clip(w_scaled, ratios, spec) and quantize the result with `spec`. Jittable (spec, grid,
    max_shrink static). NVFP4 / double-quantized scales depend on every block: each block is
    then scored with all blocks clipped at the same ratio (an approximation).
    """
    fn = "awq_clip_search"
    k = _check_x(fn, x)
    _as_2d("w_scaled", w_scaled, k, fn, f"x {tuple(x.shape)}")
    check_spec(fn, "w_scaled", spec, tuple(w_scaled.shape))
    _check_grid(fn, grid)
    if not isinstance(max_shrink, (int, float)) or not 0.0 <= max_shrink < 1.0:
        raise JaxquantError(f"{fn}: max_shrink={max_shrink!r}; pass a float in [0, 1) (0.5 is "
                            "AutoAWQ's default)")
    return _clip_search(x, w_scaled, spec, grid, float(max_shrink))


def apply_clip(w: Array, ratios: Array, spec: ArraySpec) -> Array:
    """w [K, N] clipped per block to [r lo, r hi] (lo, hi the block's min and max), w's dtype.

    ratios: f32 of spec's scale grid shape, from awq_clip_search.
    """
    fn = "apply_clip"
    _as_2d("w", w, None, fn, "")
    check_spec(fn, "w", spec, tuple(w.shape))
    g = blocks.grid_shape(tuple(w.shape), spec.block_shape)
    if tuple(getattr(ratios, "shape", ())) != g:
        raise JaxquantError(f"{fn}: ratios have shape {tuple(getattr(ratios, 'shape', ()))}; "
                            f"expected the scale grid {g} of w {tuple(w.shape)} under block "
                            f"{spec.block_shape} (pass awq_clip_search's output for this spec)")
    w32 = w.astype(jnp.float32)
    lo, hi = _block_bounds(w32, spec)
    return _clip_blocks(w32, lo, hi, jnp.asarray(ratios, jnp.float32), spec).astype(w.dtype)


# ---------------------------------------------------------------------------------- folding


def _check_s(fn: str, s, k: int, ref: str) -> None:
    _check_vector(fn, "s", s, k, ref)


def scale_weights(w: Array, s: Array) -> Array:
    """W [K, N] * s[:, None] in W's dtype: a layer that now reads x / s."""
    _as_2d("w", w, None, "scale_weights", "")
    _check_s("scale_weights", s, w.shape[0], f"w {tuple(w.shape)} (axis 0)")
    return (w.astype(jnp.float32) * s.astype(jnp.float32)[:, None]).astype(w.dtype)


def fold_into_norm(norm_scale: Array, s: Array) -> Array:
    """norm_scale [K] / s in norm_scale's dtype: the norm then outputs x / s. Also folds a
    preceding linear's bias [K]."""
    shape = tuple(getattr(norm_scale, "shape", ()))
    if len(shape) != 1:
        raise JaxquantError(f"fold_into_norm: norm_scale has shape {shape}; expected [K]")
    _check_s("fold_into_norm", s, shape[0], f"norm_scale {shape}")
    return (norm_scale.astype(jnp.float32) / s.astype(jnp.float32)).astype(norm_scale.dtype)


def fold_into_linear_outputs(w_prev: Array, s: Array) -> Array:
    """w_prev [K_prev, K] / s[None, :] in w_prev's dtype: the preceding linear then outputs x / s
    (exact through elementwise ops per channel, e.g. SwiGLU's act(gate) * up)."""
    _as_2d("w_prev", w_prev, None, "fold_into_linear_outputs", "")
    _check_s("fold_into_linear_outputs", s, w_prev.shape[1],
             f"w_prev {tuple(w_prev.shape)} (axis 1)")
    return (w_prev.astype(jnp.float32) / s.astype(jnp.float32)[None, :]).astype(w_prev.dtype)
