"""A tiny autotuner shared by the kernel packages.

Configs are looked up per (op, device kind, shape key):
  1. the user cache file ($JAXQUANT_AUTOTUNE_CACHE, default ~/.cache/jaxquant/autotune.json),
  2. the tuned table shipped in the package (kernels/tuned.json, written from benchmark runs),
  3. the op's heuristic default.
Tuning (sweeping the op's candidate configs on synthetic inputs of the call's shapes, timing
each, keeping the fastest that matches the reference) runs only when asked: `tune=True` on
the op's api, or JAXQUANT_AUTOTUNE=1. Results go to the user cache file.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from typing import Any, Callable, Sequence

import jax

from jaxquant.kernels._common import device_kind

_LOCK = threading.Lock()
_MEM: dict[str, dict[str, Any]] = {}
_LOADED: dict[str, bool] = {}
SHIPPED = os.path.join(os.path.dirname(__file__), "tuned.json")


def cache_path() -> str:
    return os.environ.get(
        "JAXQUANT_AUTOTUNE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "jaxquant", "autotune.json")
    )


def tuning_enabled() -> bool:
    return os.environ.get("JAXQUANT_AUTOTUNE", "0").lower() in ("1", "true", "yes")


def make_key(op: str, shape_key: str, device: str | None = None) -> str:
    return f"{op}|{device or device_kind()}|{shape_key}"


def _load(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _table(path: str) -> dict[str, Any]:
    with _LOCK:
        if not _LOADED.get(path):
            _MEM[path] = _load(path)
            _LOADED[path] = True
        return _MEM[path]


def lookup(key: str) -> dict[str, Any] | None:
    for path in (cache_path(), SHIPPED):
        hit = _table(path).get(key)
        if hit is not None:
            return hit.get("config", hit)
    return None


def store(key: str, config: dict[str, Any], us: float, path: str | None = None) -> None:
    path = path or cache_path()
    table = _table(path)
    with _LOCK:
        table[key] = {"config": config, "us": us, "time": time.strftime("%Y-%m-%d")}
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(table, f, indent=1, sort_keys=True)
        os.replace(tmp, path)


def clear_memory() -> None:
    with _LOCK:
        _MEM.clear()
        _LOADED.clear()


def device_us(run: Callable[[], Any], *, iters: int = 5) -> tuple[float, dict[str, float]]:
    """GPU kernel time of run() in microseconds from a jax.profiler trace (the summed
    durations of the kernels on the first GPU's stream lines, per call) and a per-kernel
    breakdown; (nan, {}) when the trace has no GPU events (e.g. on CPU)."""
    import glob
    import tempfile

    from jax.profiler import ProfileData

    jax.block_until_ready(run())
    d = tempfile.mkdtemp(prefix="jqprof")
    with jax.profiler.trace(d):
        for _ in range(iters):
            jax.block_until_ready(run())
    files = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)
    if not files:
        return float("nan"), {}
    pd = ProfileData.from_file(files[0])
    per: dict[str, float] = {}
    for plane in pd.planes:
        if not plane.name.startswith("/device:GPU"):
            continue
        for line in plane.lines:
            if not line.name.startswith("Stream"):
                continue
            for ev in line.events:
                per[ev.name] = per.get(ev.name, 0.0) + ev.duration_ns / 1e3
        break
    if not per:
        return float("nan"), {}
    total = sum(per.values()) / iters
    return total, {k: v / iters for k, v in sorted(per.items(), key=lambda kv: -kv[1])}


def time_config(run: Callable[[], Any], *, reps: int = 10, inner: int = 1) -> float:
    """Microseconds of run(): GPU kernel time from a profiler trace when available (wall
    clock of a us-scale kernel is mostly dispatch), else the median wall clock."""
    if jax.default_backend() == "gpu":
        try:
            us, _ = device_us(run)
            if us == us:  # not nan
                return us
        except Exception:  # noqa: BLE001 - profiler unavailable: fall back to wall clock
            pass
    jax.block_until_ready(run())
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            out = run()
        jax.block_until_ready(out)
        ts.append((time.perf_counter() - t0) / inner)
    return statistics.median(ts) * 1e6


def tune(key: str, candidates: Sequence[Any], build: Callable[[Any], Callable[[], Any]],
         check: Callable[[Any], bool] | None = None, *, to_dict: Callable[[Any], dict] = lambda c: c.to_dict(),
         verbose: bool = False) -> Any:
    """Times every candidate (build(cfg) returns a zero-argument jitted runner); keeps the
    fastest whose output passes `check`; stores it under `key`; returns the config."""
    best, best_us = None, float("inf")
    for cfg in candidates:
        try:
            run = build(cfg)
            out = run()
            if check is not None and not check(out):
                if verbose:
                    print(f"autotune {key}: {cfg} failed the check")
                continue
            us = time_config(run)
        except Exception as e:  # noqa: BLE001 - a config that does not compile is skipped
            if verbose:
                print(f"autotune {key}: {cfg} failed: {e!r}"[:300])
            continue
        if verbose:
            print(f"autotune {key}: {us:9.1f} us  {cfg}")
        if us < best_us:
            best, best_us = cfg, us
    if best is not None:
        store(key, to_dict(best), best_us)
    return best
