"""Data-parallel calibration: each device captures the layer inputs of its slice of the
calibration batch; statistics are reduced across devices so that GPTQ / AWQ / SmoothQuant see
exactly what one device would have seen.

Reductions of jaxquant.methods.capture.LayerStats over the data axis (inside shard_map):
  hessian  psum of the local X^T X   (equal to one device's up to float summation order)
  absmax   pmax                      (exact)
  abssum, count  psum
  sample   the first S rows of the batch in device order (all_gather of each device's first S
           rows, then merged): exactly the rows one device keeps, since device d holds windows
           [d B / n, (d + 1) B / n) of the batch.
Batches are merged in order, so the streaming statistics match the single-device stream.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxquant.errors import JaxquantError
from jaxquant.methods import sequential
from jaxquant.methods.adapters import LlamaAdapter
from jaxquant.methods.capture import LayerStats, captured_apply, update_stats
from jaxquant.recipes.recipe import Recipe, Rule, uses_gptq

P = PartitionSpec


def merge_samples(samples: Array, filled: Array) -> tuple[Array, Array]:
    """samples [n, S, K] with filled [n] valid leading rows each -> (the first S valid rows in
    order [S, K], how many there are)."""
    n, s, _ = samples.shape
    ends = jnp.cumsum(filled)
    starts = ends - filled
    rows = jnp.arange(s)
    src = jnp.clip(jnp.searchsorted(ends, rows, side="right"), 0, n - 1)
    inner = jnp.clip(rows - starts[src], 0, max(s - 1, 0))
    valid = rows < ends[-1]
    picked = samples[src, inner] if s else samples[0]
    return jnp.where(valid[:, None], picked, 0.0), jnp.minimum(ends[-1], s).astype(jnp.int32)


def merge_stats(first: LayerStats, then: LayerStats) -> LayerStats:
    """Statistics of the rows of `first` followed by those of `then`."""
    sample, filled = merge_samples(jnp.stack([first.sample, then.sample]),
                                   jnp.stack([first.filled, then.filled]))
    hessian = None if first.hessian is None else first.hessian + then.hessian
    return LayerStats(hessian, jnp.maximum(first.absmax, then.absmax),
                      first.abssum + then.abssum, first.count + then.count, sample, filled)


def reduce_layer_stats(local: LayerStats, axis_name: str) -> LayerStats:
    """Inside shard_map: one device's statistics -> those of all devices' rows in device order
    (replicated). See the module docstring for each field."""
    sample, filled = merge_samples(lax.all_gather(local.sample, axis_name),
                                   lax.all_gather(local.filled, axis_name))
    hessian = None if local.hessian is None else lax.psum(local.hessian, axis_name)
    return LayerStats(hessian, lax.pmax(local.absmax, axis_name), lax.psum(local.abssum, axis_name),
                      lax.psum(local.count, axis_name), sample, filled)


def dp_block_statistics(mesh: Mesh, data_axis: str, adapter: LlamaAdapter, i: int, block: dict,
                        rules: dict[str, Rule], hidden: list, outputs: bool = False
                        ) -> dict[str, LayerStats] | tuple[dict[str, LayerStats], list | None]:
    """sequential.block_statistics with the batch of hidden states split over `data_axis`:
    each device captures its rows, statistics are reduced with psum / pmax / all_gather;
    outputs=True also returns the float block's outputs per batch, sharded like `hidden`."""
    if not any(r.method in sequential.CALIBRATED for r in rules.values()):
        return ({}, None) if outputs else {}
    capture = captured_apply(adapter.block_module(i), quantized=False)

    def batch_stats(block: dict, h: Array) -> tuple[dict[str, LayerStats], Array | None]:
        after, seen = capture({"params": block}, h, *adapter.block_args(h))
        out = {}
        for rel, x in seen.items():
            rows = sequential.AWQ_SAMPLE_ROWS if rel in rules else 0
            gptq = rel in rules and uses_gptq(rules[rel])
            st = update_stats(LayerStats.init(x.shape[-1], hessian=gptq, sample_rows=rows), x)
            out[rel] = reduce_layer_stats(st, data_axis)
        return out, after[0] if outputs else None  # unreturned, its last matmul is dropped

    fn = jax.jit(jax.shard_map(batch_stats, mesh=mesh, in_specs=(P(), P(data_axis)),
                               out_specs=(P(), P(data_axis) if outputs else None),
                               check_vma=False))
    stats: dict[str, LayerStats] = {}
    after = []
    for h in hidden:
        found, out = fn(block, h)
        for rel, st in found.items():
            stats[rel] = merge_stats(stats[rel], st) if rel in stats else st
        after.append(out)
    sequential._min_tokens(stats, {r: v for r, v in rules.items() if uses_gptq(v)})
    return (stats, after) if outputs else stats


def quantize_calibrated_dp(
    model: Any,
    params: Any,
    recipe: Recipe | str,
    calibration_tokens: np.ndarray,
    mesh: Mesh,
    *,
    data_axis: str = "data",
    batch_size: int = 8,
) -> tuple[Any, sequential.CalibrationReport]:
    """jaxquant.methods.sequential.quantize_calibrated, data-parallel over `data_axis` of `mesh`:
    calibration windows int32 [n_windows, T] are split across devices batch by batch (every
    batch must split evenly), hidden states stay sharded, statistics are reduced across devices
    (dp_block_statistics) and the per-layer methods run on the reduced statistics."""
    wins = np.asarray(calibration_tokens, np.int32)
    if wins.ndim != 2 or wins.shape[0] == 0:
        raise JaxquantError("calibration_tokens must be a non-empty [n_windows, seq_len] array")
    n = mesh.shape[data_axis]
    sizes = {len(wins[j: j + batch_size]) for j in range(0, len(wins), batch_size)}
    if any(s % n for s in sizes):
        raise JaxquantError(
            f"calibration batches of {sorted(sizes)} windows do not split over {n} devices of "
            f"mesh axis {data_axis!r}; use batch_size and a window count that are multiples of {n}")
    batch_sharding = NamedSharding(mesh, P(data_axis))
    return sequential.quantize_calibrated(
        model, params, recipe, wins, batch_size=batch_size, progress=False,
        place_batch=lambda w: jax.device_put(w, batch_sharding),
        statistics=lambda *a, **kw: dp_block_statistics(mesh, data_axis, *a, **kw))
