"""Pallas GPU kernels for quantized matmuls (installed as `jaxquant.kernels`).

One folder per op, each with the same files (tokamax-style):
  api.py            the public function; `implementation=` picks a backend, None tries the
                    Pallas kernel on GPU and falls back to XLA elsewhere or for shapes it
                    does not support.
  reference.py      the op's semantics in plain XLA: the reference every kernel is checked
                    against (and the "xla" implementation).
  pallas_triton.py  the Pallas-Triton kernel(s).
  config.py         a frozen, validated dataclass of block sizes / warps / stages / split-k
                    and the heuristic defaults.
  arg_specs.py      representative shapes (benchmarks, autotuner) and small CPU test shapes.
  bench.py          timing of one op against XLA baselines (see kernels/benchmarks/run.py).

Ops:
  w4a16       int4 weights (group-wise scales, optional zero points) x bf16 activations.
  fp8_matmul  FP8 E4M3 W8A8: per-output-channel weight scales x dynamic per-token
              activation scales.
"""
