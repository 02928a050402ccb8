"""Run a few W4A16 decode variants once each (for `ncu -k regex:w4a16`): 8192x8192, M=1.
python -m jaxquant.kernels.benchmarks.ncu_probe NAME [NAME ...] (names from explore.decode2_variants)"""

import sys

import jax
import jax.numpy as jnp

from jaxquant.kernels.benchmarks.explore import decode2_variants, int4_weights
from jaxquant.kernels.w4a16.pallas_triton import w4a16_matmul_triton

K = N = 8192
M = int((sys.argv[1:] or ["1"])[0]) if (sys.argv[1:] and sys.argv[1].isdigit()) else 1
names = [a for a in sys.argv[1:] if not a.isdigit()]
w = int4_weights(jax.random.key(0), K, N, 128)
x = jax.random.normal(jax.random.key(1), (M, K), jnp.bfloat16)
for name, cfg in decode2_variants(M, K, N):
    if name in names:
        f = jax.jit(lambda x, w, cfg=cfg: w4a16_matmul_triton(x, w, group_size=128, config=cfg))
        jax.block_until_ready(f(x, w))
        print("ran", name, cfg, flush=True)
