"""The GPU GPTQ timing script runs end to end at a tiny size and writes its JSON."""

from __future__ import annotations

import json

from jaxquant.methods import bench_gptq


def test_bench_gptq_tiny_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    row = bench_gptq.main(["--shape", "tiny", "--blocks", "2", "--calib-windows", "4",
                           "--seq-len", "128", "--batch-size", "2", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["blocks"] == 2 and len(saved["seconds_per_block"]) == 2
    assert saved["calib_tokens"] == 512 and saved["steady_seconds_per_block"] > 0
    assert saved == json.loads(json.dumps(row))
    assert "| steady state per block |" in capsys.readouterr().out
