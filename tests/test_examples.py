"""Every example script runs to completion at a small size."""

from __future__ import annotations

import pathlib
import runpy
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"

# script -> arguments that keep it small for CI
SMALL_ARGS: dict[str, list[str]] = {
    "quantize_linen_mlp.py": ["--width", "256"],
    "gpu_layout_w4a16.py": ["--d-model", "128", "--layers", "1", "--steps", "2"],
    "quantize_nnx_model.py": ["--width", "128"],
    "recipe_from_file.py": ["--width", "128"],
    "static_activation_scales.py": [],
    "kv_cache_quantization.py": ["--layers", "2", "--new-tokens", "6"],
    "export_restore.py": ["--width", "64"],
    "export_restore_compressed_tensors.py": ["--width", "64"],
    "sharded_quantize.py": ["--d-model", "128"],
    "sharded_calibration.py": ["--windows", "8", "--layers", "1"],
    "calibrated_ptq.py": ["--d-model", "64", "--layers", "1", "--windows", "8"],
    "qat_smollm2.py": ["--steps", "1", "--seq-len", "32", "--batch-size", "1",
                       "--eval-tokens", "512", "--layers", "1"],
    "qlora_smollm2.py": ["--steps", "1", "--seq-len", "32", "--batch-size", "1",
                         "--eval-tokens", "512", "--layers", "1"],
}


def test_every_example_is_listed():
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(SMALL_ARGS)


# these set XLA_FLAGS (simulated devices) before importing jax: they need a fresh process
OWN_PROCESS = {"sharded_calibration.py", "sharded_quantize.py"}


@pytest.mark.parametrize("script", sorted(SMALL_ARGS))
def test_example_runs(script, tmp_path, monkeypatch, capsys):
    args = list(SMALL_ARGS[script])
    if script == "recipe_from_file.py":
        args += ["--out", str(tmp_path / "ckpt")]
    if script in OWN_PROCESS:
        proc = subprocess.run(
            [sys.executable, str(EXAMPLES / script), *args],
            capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        return
    # the rest run in this process, as `python examples/<script>` would (no interpreter and jax
    # start-up per script)
    monkeypatch.setattr(sys, "argv", [str(EXAMPLES / script), *args])
    monkeypatch.chdir(tmp_path)
    try:
        runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    except SystemExit as e:
        assert e.code in (None, 0), capsys.readouterr().out[-2000:]
    assert capsys.readouterr().out.strip(), "the example printed nothing"
