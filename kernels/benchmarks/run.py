"""Benchmark of all kernels on the shapes of their arg_specs; prints a table and writes
kernels/benchmarks/results/<YYYY-MM-DD>-<device>.json (or $OUT/... when OUT is set).

    pip install -e . --no-deps --no-build-isolation -q   # or PYTHONPATH with jaxquant.kernels
    PYTHONUNBUFFERED=1 python -m jaxquant.kernels.benchmarks.run [w4a16] [fp8] [--decode]
        [--tune] [--triton-max-m 16] [--small] [--ms 1,128] [--kn 14336x4096,8192x8192]

W4A16 rows: the weights in layout "nk" (jaxquant.inference.to_gpu_layout: the Mosaic GPU
kernel for M <= 256, XLA's dequantize + cuBLAS above) for every shape, and the canonical
layout (Pallas-Triton) for M <= --triton-max-m, each against XLA's bf16 dot and XLA's int4
dequantize + dot in the same run. --ms / --kn give the W4A16 shapes (the product of the M
values and the KxN pairs; --ms alone filters the default list). --tune autotunes the Mosaic
configs first (cached; the cache file is copied to $OUT/autotune.json).
"""

from __future__ import annotations

import datetime
import os
import sys
import traceback

import jax

from jaxquant.kernels.benchmarks import harness as H

COLS = ("kernel", "M", "K", "N", "group", "us", "xla_bf16_us", "xla_format_us", "floor_us",
        "vs_bf16", "vs_xla_format", "pct_floor", "max_rel_err", "dev_us")


def fmt_row(r):
    out = []
    for c in COLS:
        v = r.get(c, "")
        out.append(f"{v:.3g}" if isinstance(v, float) else str(v))
    return " | ".join(out)


def _opt(argv, name, default):
    return argv[argv.index(name) + 1] if name in argv else default


def w4a16_shapes(argv: list[str]) -> list[tuple[int, int, int, int]]:
    """(M, K, N, group) rows of the W4A16 benchmark: the default list (--decode: M <= 16,
    --small: CPU sizes), or the product of --ms values and --kn KxN pairs."""
    from jaxquant.kernels.w4a16 import arg_specs

    shapes = arg_specs.BENCH_SHAPES
    if "--decode" in argv:
        shapes = arg_specs.DECODE_SHAPES
    if "--small" in argv:
        shapes = arg_specs.TEST_SHAPES
    try:
        ms = [int(v) for v in _opt(argv, "--ms", "").split(",") if v]
        kns = [tuple(int(d) for d in v.split("x")) for v in _opt(argv, "--kn", "").split(",") if v]
    except ValueError as e:
        raise SystemExit(f"--ms takes integers (1,16,128), --kn KxN pairs (4096x14336): {e}")
    if any(len(kn) != 2 for kn in kns):
        raise SystemExit(f"--kn takes KxN pairs such as 4096x14336, got {_opt(argv, '--kn', '')}")
    if kns:  # any (K, N), e.g. a model's own projections
        return [(m, k, n, arg_specs.GROUP) for (k, n) in kns for m in (ms or arg_specs.MS)]
    return [s for s in shapes if not ms or s[0] in ms]


def main(argv):
    ops = [a for a in argv if a in ("w4a16", "fp8")] or ["w4a16", "fp8"]
    dl = H.Deadline(float(os.environ.get("BUDGET_S", "540")))
    dev = jax.devices()[0]
    kind = str(dev.device_kind).replace(" ", "_")
    date = datetime.date.today().isoformat()
    root = os.environ.get("OUT") or os.path.join(os.path.dirname(__file__), "results")
    path = os.path.join(root, f"{date}-{kind}.json")
    bw = H.copy_bandwidth(1 << 24 if "--small" in argv else 2 << 30)
    meta = dict(kernel="_meta", device=dev.device_kind, jax=jax.__version__, copy_TBps=bw / 1e12,
                method="R distinct weights per jitted call (R>=12), warm-up, median of 10 wall-clock "
                       "calls / R; dev_us = summed GPU kernel time per matmul from a profiler trace; "
                       "errors vs float64 on <=16 rows")
    rows = [meta]
    print(f"device {dev.device_kind}, jax {jax.__version__}, copy {bw / 1e12:.2f} TB/s", flush=True)
    print(" | ".join(COLS), flush=True)
    def run_w4a16():
        from jaxquant.kernels.w4a16 import bench

        by_kn = {}
        for m, k, n, g in w4a16_shapes(argv):
            by_kn.setdefault((k, n, g), []).append(m)
        tri_max = int(_opt(argv, "--triton-max-m", "16"))
        tune = True if "--tune" in argv else None
        for (k, n, g), ms in by_kn.items():
            for layout, mlist in (("nk", ms), ("canonical", [m for m in ms if m <= tri_max])):
                if not dl.ok(30) or not mlist:
                    continue
                ss = bench.ShapeSet(k, n, g, layout=layout)
                for m in mlist:
                    if not dl.ok(20):
                        break
                    try:
                        r = bench.bench_shape(ss, m, bw, profile=m <= 256,
                                              tune=tune if layout == "nk" else None)
                    except Exception as e:  # noqa: BLE001
                        traceback.print_exc()
                        r = dict(kernel=f"w4a16 ({layout})", M=m, K=k, N=n, group=g,
                                 error=repr(e)[:500])
                    rows.append(r)
                    print(fmt_row(r), flush=True)
                    H.write_json(path, rows)
                del ss
    def run_fp8():
        from jaxquant.kernels.fp8_matmul import arg_specs, bench

        for m, k, n in (arg_specs.TEST_SHAPES if "--small" in argv else arg_specs.BENCH_SHAPES):
            for impl in (None, "triton"):
                if not dl.ok(40):
                    break
                try:
                    r = bench.bench_shape(m, k, n, bw, implementation=impl)
                except Exception as e:  # noqa: BLE001
                    traceback.print_exc()
                    r = dict(kernel="fp8_matmul", M=m, K=k, N=n, error=repr(e)[:500])
                rows.append(r)
                print(fmt_row(r), flush=True)
                H.write_json(path, rows)
    for op in ops:
        {"w4a16": run_w4a16, "fp8": run_fp8}[op]()
    H.write_json(path, rows)
    from jaxquant.kernels import autotune

    if os.environ.get("OUT") and os.path.exists(autotune.cache_path()):
        import shutil

        shutil.copy(autotune.cache_path(), os.path.join(os.environ["OUT"], "autotune.json"))
    print("wrote", path)


if __name__ == "__main__":
    main(sys.argv[1:])
