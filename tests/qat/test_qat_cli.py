"""`jaxquant qat` end to end on a tiny random Llama GGUF (QAT and --qlora), the saved
checkpoint read back by `jaxquant eval`, and its bad-input errors."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from jaxquant.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "models"))
from test_gguf_loader import write_tiny_gguf  # noqa: E402


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    write_tiny_gguf(path, tied=True)
    return str(path)

TINY = ["--steps", "2", "--seq-len", "32", "--batch-size", "1", "--eval-tokens", "512", "--json"]


def _run(capsys, *argv: str) -> tuple[int, dict | None, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 and out.strip() else None, err


@pytest.mark.parametrize("mode", [[], ["--qlora", "--lora-rank", "4"]])
def test_qat_trains_saves_and_eval_reads_it(capsys, tmp_path, tiny_gguf, mode):
    out = tmp_path / "m"
    recipe = [] if mode else ["--recipe", "w4a16", "--bits", "3"]
    code, res, err = _run(capsys, "qat", "--model", tiny_gguf, "--out", str(out), *recipe, *mode,
                          *TINY)
    assert code == 0, err
    assert res["mode"] == ("qlora" if mode else "qat") and len(res["losses"]) == 2
    ppl = res["perplexity"]
    assert all(1 < v and math.isfinite(v) for v in ppl.values())
    assert res["tokens_evaluated"] == 511 and all(math.isfinite(x) for x in res["losses"])
    if mode:
        assert res["lora"]["rank"] == 4 and (out / "adapters" / "jaxquant.json").is_file()
    code, ev, err = _run(capsys, "eval", "--model", str(out), "--max-tokens", "512", "--json")
    assert code == 0, err
    assert ev["quantized"]["perplexity"] == pytest.approx(ppl["after"], rel=1e-4)


def test_qat_bad_input(capsys, tmp_path):
    (tmp_path / "exists").mkdir()
    for argv, msg in [
        (["--out", str(tmp_path / "exists")], "exists; pass --overwrite"),
        (["--out", str(tmp_path / "a"), "--steps", "0"], "steps=0 must be >= 1"),
        (["--out", str(tmp_path / "a"), "--lr=-1e-4"], "learning_rate is -0.0001"),
        (["--out", str(tmp_path / "a"), "--qlora", "--learn-scales"], "--learn-scales applies"),
        (["--out", str(tmp_path / "a"), "--recipe", "w4a16-gptq"], "uses method 'gptq'"),
    ]:
        code, _, err = _run(capsys, "qat", *argv)
        assert code == 2 and msg in " ".join(err.split()), err
