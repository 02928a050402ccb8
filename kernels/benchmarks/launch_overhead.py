"""Wall-clock vs kernel time per matmul for XLA's bf16 dot and the two W4A16 kernels, under the
XLA flags of this process (compare runs with and without command buffers, i.e. CUDA graphs):

    python -m jaxquant.kernels.benchmarks.launch_overhead
    XLA_FLAGS=--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL \\
        python -m jaxquant.kernels.benchmarks.launch_overhead

Prints one row per (op, shape): wall us per matmul (harness.time_fn, R distinct weights in one
jitted call) and summed kernel us from a profiler trace, and appends them to $OUT/launch.json.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp

from jaxquant.kernels.benchmarks import harness as H
from jaxquant.kernels.w4a16 import bench
from jaxquant.kernels.w4a16.api import w4a16_matmul
from jaxquant.kernels.w4a16.layouts import to_nk


def main() -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    rows = []
    for K, N in ((4096, 4096), (8192, 8192)):
        ss = bench.ShapeSet(K, N, 128)
        nk = [jax.jit(lambda w: to_nk(w, K))(w) for w in ss.ws]
        x = jax.random.normal(jax.random.key(1), (1, K), jnp.bfloat16)
        ops = {
            "xla bf16 dot": (lambda x, w: jnp.dot(x, w), ss.wb),
            "w4a16 triton": (lambda x, w: w4a16_matmul(x, w, group_size=128), ss.ws),
            "w4a16 mosaic": (lambda x, w: w4a16_matmul(x, w, group_size=128), nk),
        }
        for name, (f, ws) in ops.items():
            us, _, _ = H.time_fn(f, x, ws)
            dev, _ = H.device_time(f, x, ws)
            r = dict(op=name, M=1, K=K, N=N, R=len(ws), wall_us=us, kernel_us=dev, xla_flags=flags)
            rows.append(r)
            print(f"{name:14s} M=1 {K}x{N}: wall {us:6.1f} us, kernels {dev:6.1f} us  [{flags}]",
                  flush=True)
        del ss, nk
    out = os.path.join(os.environ.get("OUT", "."), "launch.json")
    prev = json.load(open(out)) if os.path.exists(out) else []
    H.write_json(out, prev + rows)


if __name__ == "__main__":
    main()
