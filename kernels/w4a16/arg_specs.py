"""Representative W4A16 shapes: benchmarks/autotuner (GPU) and small CPU test shapes."""

from __future__ import annotations

KN = ((8192, 8192), (4096, 4096), (4096, 14336), (14336, 4096))
MS = (1, 16, 128, 1024, 8192)
GROUP = 128

# (M, K, N, group)
BENCH_SHAPES = tuple((m, k, n, GROUP) for (k, n) in KN for m in MS)
DECODE_SHAPES = tuple(s for s in BENCH_SHAPES if s[0] <= 16)
# small shapes for CPU interpret-mode runs (the tests use tests/kernels/kernel_cases.py)
TEST_SHAPES = ((1, 256, 64, 128), (3, 192, 48, 64), (5, 160, 40, 32), (16, 384, 64, 128))
