"""The tensor-parallel decode benchmark runs end to end at a tiny size on 2 simulated devices and
writes its JSON (the full Llama-3-8B shape runs on a 2-GPU machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_bench_tp_tiny(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
                         "--xla_force_host_platform_device_count=2".strip())
    proc = subprocess.run([sys.executable, "-m", "jaxquant.sharding.bench_tp", "--tiny",
                           "--steps", "3", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "| tp | 2 |" in proc.stdout and "| single | 1 |" in proc.stdout
    r = json.loads(out.read_text())
    assert r["date"] and r["device"] == "cpu" and r["model"] == "tiny"
    single, tp = r["rows"]
    assert single["setup"] == "single" and tp["setup"] == "tp"
    assert single["tokens_per_s"] > 0 and tp["tokens_per_s"] > 0
    assert r["greedy_ids_agree"] == 1.0
    # tensor parallelism splits the quantized layers: each of the 2 devices holds less than the
    # single device, but more than half (embedding and norms are replicated)
    one = single["param_bytes_per_device"]["cpu:0"]
    per = list(tp["param_bytes_per_device"].values())
    assert len(per) == 2 and all(one / 2 < b < one for b in per)
    assert len(set(tp["cache_bytes_per_device"].values())) == 1


def test_measure_quantize_tiny(tmp_path):
    out = tmp_path / "quantize.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "jaxquant.sharding.measure_quantize",
                           "--d-model", "128", "--layers", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    r = json.loads(out.read_text())
    assert r["devices"] == 8 and r["mesh"] == {"data": 2, "model": 4}
    for row in r["rows"]:
        assert row["bit_exact_vs_one_device"] and row["collectives"]["all-gather"] == 0
        assert row["float_bytes_per_device"] < row["float_bytes_total"]
        assert row["compiled_per_device"]["argument_bytes"] <= row["float_bytes_per_device"]
