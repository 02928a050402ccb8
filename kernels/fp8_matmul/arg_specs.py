"""Representative FP8 W8A8 shapes: benchmarks/autotuner (GPU) and small CPU test shapes."""

from __future__ import annotations

# (M, K, N)
BENCH_SHAPES = ((4096, 4096, 4096), (8192, 8192, 8192))
TEST_SHAPES = ((5, 128, 64), (20, 200, 72), (33, 256, 64))
