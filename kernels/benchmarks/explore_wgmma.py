"""The Mosaic W4A16 kernel on layout "wgmma" (pre-shuffled tiles, kernels/w4a16/wgmma_tiles.py)
against the same kernel on layout "nk", same run: correctness on a case list first (float64
reference), then kernel time (profiler) and wall time (shared/GPU_METHOD.md) per shape.

    PYTHONUNBUFFERED=1 python -m jaxquant.kernels.benchmarks.explore_wgmma [--ms 1,16]

Writes $OUT/explore-wgmma.json (or kernels/benchmarks/results/) after every row.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from jaxquant.kernels.benchmarks import harness as H
from jaxquant.kernels.w4a16 import api, arg_specs, bench, wgmma_tiles
from jaxquant.kernels.w4a16.layouts import to_nk
from jaxquant.kernels.w4a16.mosaic_gpu import MosaicConfig, fit_split, w4a16_matmul_mosaic

CHECKS = (  # (M, K, N, group, asym, block_n, block_k, split)
    (1, 1024, 256, 128, False, 64, 128, 2), (5, 1024, 256, 128, True, 64, 128, 1),
    (16, 2048, 512, 64, False, 64, 128, 2), (16, 2048, 512, 64, True, 128, 256, 2),
    (33, 1024, 384, 128, False, 128, 128, 1), (128, 1024, 256, 256, True, 128, 128, 2),
    (8, 1024, 256, 128, False, 128, 256, 1), (1, 4096, 4096, 128, False, 64, 128, 8),
)
DECODER = ((4096, 6144), (4096, 28672), (14336, 4096))


def shuffle(w):
    """nk Int4Weights -> (int32 wgmma tiles, scale, zero point)."""
    return (wgmma_tiles.pack(w.qvalue.astype(jnp.int8)), w.scale, w.zero_point)


def kernel(g, cfg):
    return lambda x, w: w4a16_matmul_mosaic(x, w[0], w[1], w[2], group_size=g, config=cfg)


def check_rows():
    rows = []
    for (M, K, N, g, asym, bn, bk, split) in CHECKS:
        w = bench.make_weights(jax.random.key(M + K + N), K, N, g, asym)
        W64 = bench.host_dequant64(w, K, g)
        x = jax.random.normal(jax.random.key(1), (M, K), jnp.bfloat16)
        x = x.at[0, :64].set(30.0)  # an outlier run in the first group
        ref = np.asarray(x.astype(jnp.float32), np.float64) @ W64
        cfg = MosaicConfig(block_n=bn, block_m=min(128, max(8, -(-M // 8) * 8)),
                           split_k=fit_split(K, split, bk), block_k=bk, scale_mode="epilogue")
        wn = to_nk(w, K)
        out = {}
        for name, ww in (("nk", (wn.qvalue, wn.scale, wn.zero_point)), ("wgmma", shuffle(wn))):
            y = np.asarray(jax.jit(kernel(g, cfg))(x, ww).astype(jnp.float32), np.float64)
            out[name] = H.rel_err(y, ref)
        row = dict(kind="check", M=M, K=K, N=N, group=g, asym=asym, cfg=cfg.to_dict(),
                   rel_err_nk=out["nk"], rel_err_wgmma=out["wgmma"])
        print(row, flush=True)
        rows.append(row)
    return rows


def variants(base: MosaicConfig, K: int) -> list[MosaicConfig]:
    out = [base]
    for split in (base.split_k // 2, base.split_k * 2):
        if split >= 1:
            out.append(dataclasses.replace(base, split_k=fit_split(K, split, base.block_k)))
    out.append(dataclasses.replace(base, stages=6 if base.stages != 6 else 4))
    if base.block_k == 128:
        out.append(dataclasses.replace(base, block_k=256, split_k=fit_split(K, max(1, base.split_k // 2), 256)))
    seen, uniq = set(), []
    for c in out:
        c = dataclasses.replace(c, scale_mode="epilogue")
        if c not in seen:
            seen.add(c)
            uniq.append(c)
    return uniq


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--ms", default="1,16")
    p.add_argument("--budget", type=float, default=float(os.environ.get("BUDGET_S", "480")))
    args = p.parse_args(argv)
    dl = H.Deadline(args.budget)
    dev = jax.devices()[0]
    root = os.environ.get("OUT") or os.path.join(os.path.dirname(__file__), "results")
    path = os.path.join(root, "explore-wgmma.json")
    bw = H.copy_bandwidth()
    rows = [dict(kind="meta", device=dev.device_kind, jax=jax.__version__, copy_TBps=bw / 1e12,
                 date=datetime.date.today().isoformat())]
    print(rows[0], flush=True)
    rows += check_rows()
    H.write_json(path, rows)
    shapes = [(M, K, N) for (K, N) in arg_specs.KN for M in (int(m) for m in args.ms.split(","))]
    shapes += [(1, K, N) for (K, N) in DECODER]
    g = 128
    for (M, K, N) in shapes:
        if not dl.ok(45):
            break
        try:
            ss = bench.ShapeSet(K, N, g, layout="nk")
            ws_wg = [shuffle(w) for w in ss.ws]
            ws_nk = [(w.qvalue, w.scale, w.zero_point) for w in ss.ws]
            x = jax.random.normal(jax.random.key(2), (M, K), jnp.bfloat16)
            ref = np.asarray(x.astype(jnp.float32), np.float64) @ ss.W64
            tuned = api._pick_mosaic_config(M, K, N, g, ss.ws[0], tune=False)
            for name, ws, cfgs in (("nk tuned", ws_nk, [tuned]), ("wgmma", ws_wg, variants(tuned, K))):
                for cfg in cfgs:
                    fn = kernel(g, cfg)
                    us, spread, y = H.time_fn(fn, x, ws)
                    err = H.rel_err(np.asarray(y.astype(jnp.float32), np.float64), ref)
                    dev_us, _ = H.device_time(fn, x, ws)
                    row = dict(kind=name, M=M, K=K, N=N, group=g, cfg=cfg.to_dict(), us=us,
                               dev_us=dev_us, floor_us=bench.floor_us(M, K, N, g, bw),
                               TBps_dev=(K * N / 2) / (dev_us * 1e-6) / 1e12, max_rel_err=err)
                    print({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()
                           if k != "cfg"}, cfg.split_k, cfg.block_k, cfg.stages, cfg.block_n, flush=True)
                    rows.append(row)
                    H.write_json(path, rows)
        except Exception:  # keep the other shapes' rows
            traceback.print_exc()
    H.write_json(path, rows)


if __name__ == "__main__":
    main()
