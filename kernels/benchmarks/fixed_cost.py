"""Fixed cost vs streaming rate of the Mosaic W4A16 decode kernel: kernel time (profiler) of M = 1
at one N over a range of K, with the config held fixed and with the default config, next to
XLA's bf16 dot; a least-squares fit t = a + bytes / rate for each.

    PYTHONUNBUFFERED=1 python -m jaxquant.kernels.benchmarks.fixed_cost [--n 8192]

Writes $OUT/fixed-cost.json (or kernels/benchmarks/results/).
"""

from __future__ import annotations

import argparse
import datetime
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxquant.kernels.benchmarks import harness as H
from jaxquant.kernels.w4a16 import bench
from jaxquant.kernels.w4a16.mosaic_gpu import (
    MosaicConfig, default_config, fit_split, supported, w4a16_matmul_mosaic)

KS = (1024, 2048, 4096, 8192, 16384, 32768)


def fit(bytes_: tuple[float, ...], us: tuple[float, ...]) -> dict:
    """Least squares us = a + bytes / rate -> a (us), rate (TB/s)."""
    b, a = np.polyfit(np.asarray(bytes_), np.asarray(us), 1)
    return dict(fixed_us=float(a), rate_TBps=float(1e-6 / b))  # bytes/us / 1e6 = TB/s


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=8192)
    args = p.parse_args(argv)
    N, g, M = args.n, 128, 1
    if (why := supported(M, KS[-1], N, g)) is not None:
        p.error(f"--n {N}: {why}; use a multiple of 64")
    dev = jax.devices()[0]
    root = os.environ.get("OUT") or os.path.join(os.path.dirname(__file__), "results")
    rows = [dict(kind="meta", device=dev.device_kind, jax=jax.__version__,
                 date=datetime.date.today().isoformat(), N=N, M=M)]
    series: dict[str, list[tuple[float, float]]] = {}  # name -> [(bytes, us)]
    for K in KS:
        ss = bench.ShapeSet(K, N, g, layout="nk")
        x = jax.random.normal(jax.random.key(0), (M, K), jnp.bfloat16)
        ref = np.asarray(x.astype(jnp.float32), np.float64) @ ss.W64
        wbytes = K * N / 2 + K // g * N * 2
        variants = {
            "fixed split 4": MosaicConfig(block_n=64, block_m=8, split_k=fit_split(K, 4), stages=4),
            "fixed split 1": MosaicConfig(block_n=64, block_m=8, split_k=1, stages=4),
            "default": default_config(M, K, N, g),
        }
        for name, cfg in variants.items():
            fn = lambda x, w, cfg=cfg: w4a16_matmul_mosaic(
                x, w.qvalue, w.scale, w.zero_point, group_size=g, config=cfg)
            y = jax.jit(fn)(x, ss.ws[0])
            err = H.rel_err(np.asarray(y.astype(jnp.float32), np.float64), ref)
            dev_us, _ = H.device_time(fn, x, ss.ws)
            rows.append(dict(kind=name, M=M, K=K, N=N, group=g, cfg=cfg.to_dict(), dev_us=dev_us,
                             bytes=wbytes, max_rel_err=err))
            series.setdefault(name, []).append((wbytes, dev_us))
            print(name, K, round(dev_us, 2), cfg.split_k, f"{err:.1e}", flush=True)
        dot = lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32).astype(jnp.bfloat16)
        dev_us, _ = H.device_time(dot, x, ss.wb)
        rows.append(dict(kind="xla bf16", M=M, K=K, N=N, dev_us=dev_us, bytes=K * N * 2))
        series.setdefault("xla bf16", []).append((K * N * 2, dev_us))
        print("xla bf16", K, round(dev_us, 2), flush=True)
    fits = {name: fit(*zip(*pts)) for name, pts in series.items()}
    rows.append(dict(kind="fit", **fits))
    print(fits, flush=True)
    H.write_json(os.path.join(root, "fixed-cost.json"), rows)


if __name__ == "__main__":
    main()
