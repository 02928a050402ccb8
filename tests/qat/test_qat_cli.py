"""`jaxquant qat` on SmolLM2-135M at a tiny size (QAT and --qlora), the saved checkpoint read
back by `jaxquant eval`, and its bad-input errors."""

from __future__ import annotations

import json

import pytest

from jaxquant.cli import main

TINY = ["--steps", "2", "--seq-len", "32", "--batch-size", "1", "--eval-tokens", "512", "--json"]


def _run(capsys, *argv: str) -> tuple[int, dict | None, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 and out.strip() else None, err


@pytest.mark.parametrize("mode", [[], ["--qlora", "--lora-rank", "4"]])
def test_qat_trains_saves_and_eval_reads_it(capsys, tmp_path, mode):
    out = tmp_path / "m"
    recipe = [] if mode else ["--recipe", "w4a16", "--bits", "3"]
    code, res, err = _run(capsys, "qat", "--out", str(out), *recipe, *mode, *TINY)
    assert code == 0, err
    assert res["mode"] == ("qlora" if mode else "qat") and len(res["losses"]) == 2
    ppl = res["perplexity"]
    assert 1 < ppl["original"] < ppl["before"] and 1 < ppl["after"] < 10 * ppl["before"]
    assert res["tokens_evaluated"] == 511 and res["param_bytes"] < 200_000_000
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
        (["--out", str(tmp_path / "a"), "--lr", "-1e-4"], "learning_rate is -0.0001"),
        (["--out", str(tmp_path / "a"), "--qlora", "--learn-scales"], "--learn-scales applies"),
    ]:
        code, _, err = _run(capsys, "qat", *argv)
        assert code == 2 and msg in err.replace("\n", " "), err
