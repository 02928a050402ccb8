"""Timing and checking helpers that follow shared/GPU_METHOD.md.

* R distinct weight buffers go into ONE jitted function as separate arguments (like a
  model's R layers); the call's time is divided by R. R grows for small weights so that one
  call does ~ms of work and the fixed dispatch cost per call stays small.
* warm-up, then the median of >= 10 timed calls, each ended by jax.block_until_ready.
* correctness before timing: the first output is checked against a float64 NumPy reference
  on fresh random data (a subset of rows for large M).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def pick_r(weight_bytes: int, *, target_bytes: float = 6e9, lo: int = 12, hi: int = 192) -> int:
    """Number of distinct weights per jitted call."""
    return int(max(lo, min(hi, target_bytes // max(1, weight_bytes))))


def time_fn(fn: Callable, x: Any, ws: Sequence[Any], *, reps: int = 10, warmup: int = 2) -> tuple[float, float, Any]:
    """(median us per matmul, spread us (max - min) / R, first output)."""
    f = _runner(fn)
    out = f(x, ws)
    jax.block_until_ready(out)
    for _ in range(warmup):
        jax.block_until_ready(f(x, ws))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(f(x, ws))
        ts.append(time.perf_counter() - t0)
    r = len(ws)
    return statistics.median(ts) / r * 1e6, (max(ts) - min(ts)) / r * 1e6, out[0]


_RUNNERS: dict[int, tuple[Callable, Callable]] = {}


def _runner(fn: Callable) -> Callable:
    """jit(lambda x, ws: [fn(x, w) for w in ws]) with fn jitted once (one lowering, called R
    times); cached per fn object so timing and profiling share one compilation."""
    hit = _RUNNERS.get(id(fn))
    if hit is not None and hit[0] is fn:
        return hit[1]
    fj = jax.jit(fn)
    f = jax.jit(lambda x, ws: [fj(x, w) for w in ws])
    _RUNNERS.clear()
    _RUNNERS[id(fn)] = (fn, f)
    return f


def rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    out = np.asarray(out, np.float64)
    ref = np.asarray(ref, np.float64)
    if not np.all(np.isfinite(out)):
        return float("inf")
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))


def copy_bandwidth(nbytes: int = 2 << 30) -> float:
    """Read + write bytes per second of a large elementwise op through JAX."""
    n = nbytes // 4
    a = jnp.arange(n, dtype=jnp.float32)
    f = jax.jit(lambda a: a * 1.0001 + 1.0)
    jax.block_until_ready(f(a))
    ts = []
    for _ in range(10):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a))
        ts.append(time.perf_counter() - t0)
    return 2 * n * 4 / statistics.median(ts)


class Deadline:
    def __init__(self, seconds: float):
        self.t_end = time.time() + seconds

    def left(self) -> float:
        return self.t_end - time.time()

    def ok(self, need: float = 0.0) -> bool:
        return self.left() > need


def write_json(path: str, rows: list[dict]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(rows, f, indent=1)
    os.replace(tmp, path)


def device_time(fn: Callable, x: Any, ws: Sequence[Any], *, iters: int = 3) -> tuple[float, dict[str, float]]:
    """GPU kernel time per matmul (us) from a jax.profiler trace (summed kernel durations on
    the device's streams per call, divided by R) and a per-kernel breakdown (top 6)."""
    from jaxquant.kernels.autotune import device_us

    f = _runner(fn)
    jax.block_until_ready(f(x, ws))
    total, per = device_us(lambda: f(x, ws), iters=iters)
    r = len(ws)
    return total / r, {k: v / r for k, v in list(per.items())[:6]}
