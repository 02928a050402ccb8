"""The command-line tool end to end on SmolLM2-135M at small sizes, and its bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jaxquant.cli import main

SMALL = ["--max-tokens", "256", "--seq-len", "128", "--batch-size", "2"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def saved_w8(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "w8"
    assert main(["quantize", "--recipe", "w8a16", "--out", str(out), "--no-eval"]) == 0
    return out


def test_quantize_json_reports_figures(capsys, tmp_path, monkeypatch):
    from jaxquant.cli import pipeline

    # one sample prompt instead of the default two: the second only repeats the decode loop
    monkeypatch.setattr(pipeline, "DEFAULT_PROMPTS", pipeline.DEFAULT_PROMPTS[:1])
    code, out, _ = run(capsys, "quantize", "--recipe", "w4a16", "--out", str(tmp_path / "q"),
                       "--json", *SMALL)
    assert code == 0
    result = json.loads(out)
    ev = result["eval"]
    assert ev["tokens_evaluated"] == 2 * 127
    assert 1 < ev["original"]["perplexity"] < ev["quantized"]["perplexity"] < 1000
    assert ev["quantized"]["param_bytes"] < ev["original"]["param_bytes"] / 2.5
    assert len(result["generations"]) == 1
    gen = result["generations"][0]
    assert gen["prompt"] == pipeline.DEFAULT_PROMPTS[0] and gen["original"] and gen["quantized"]
    assert (tmp_path / "q" / "jaxquant.json").is_file()


def test_eval_restores_checkpoint_and_matches_bytes(capsys, saved_w8):
    code, out, _ = run(capsys, "eval", "--model", str(saved_w8), "--json", *SMALL)
    assert code == 0
    ev = json.loads(out)
    assert ev["recipe"] == "w8a16"
    # int8 weight-only: within 1% of the original on the same windows
    assert abs(ev["perplexity_delta_percent"]) < 1.0


def test_generate_from_checkpoint(capsys, saved_w8):
    code, out, _ = run(capsys, "generate", "--model", str(saved_w8), "--prompt",
                       "The capital of France is", "--max-new-tokens", "4", "--json")
    assert code == 0
    assert "Paris" in json.loads(out)["completion"]


def test_eval_user_text_file(capsys, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("It was a bright cold day in April, and the clocks were striking. " * 40)
    code, out, _ = run(capsys, "eval", "--text", str(text), "--json", *SMALL)
    assert code == 0 and json.loads(out)["text"] == str(text)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["eval", "--model", "{gguf}"], "not a GGUF file"),
        (["eval", "--recipe", "w5a16"], "unknown preset 'w5a16'"),
        (["eval", "--text", "{short}"], "text too short"),
        (["eval", "--text", "{missing}"], "does not exist"),
        (["quantize", "--out", "{existing}"], "exists; pass --overwrite"),
        (["quantize", "--recipe", "{nomatch}", "--out", "{fresh}"], "targets no layer"),
        (["generate", "--prompt", "x", "--max-new-tokens", "0"], "must be positive"),
    ],
)
def test_bad_input_gives_clear_error(capsys, tmp_path, argv, message):
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf file at all")
    (tmp_path / "short.txt").write_text("Too short.")
    (tmp_path / "existing").mkdir()
    (tmp_path / "nomatch.yaml").write_text(
        "rules:\n  - targets: ['re:does_not_exist']\n    scheme: w4a16\n"
    )
    subs = {"{gguf}": str(tmp_path / "bad.gguf"), "{short}": str(tmp_path / "short.txt"),
            "{missing}": str(tmp_path / "missing.txt"), "{existing}": str(tmp_path / "existing"),
            "{nomatch}": str(tmp_path / "nomatch.yaml"), "{fresh}": str(tmp_path / "fresh")}
    code, _, err = run(capsys, *[subs.get(a, a) for a in argv])
    assert code == 2
    assert message in " ".join(err.split()), err
    assert not (tmp_path / "fresh").exists()  # nothing half-written
