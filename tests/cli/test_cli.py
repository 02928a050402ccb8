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
def quantized_w8(tmp_path_factory) -> tuple[Path, dict]:
    """`jaxquant quantize --recipe w8a16 --json` (eval and one sample generation) and its
    checkpoint, shared by the tests that read it back."""
    import io
    from contextlib import redirect_stdout

    from jaxquant.cli import pipeline

    out = tmp_path_factory.mktemp("ckpt") / "w8"
    buf = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, redirect_stdout(buf):
        # one sample prompt instead of the default two: the second only repeats the decode loop
        mp.setattr(pipeline, "DEFAULT_PROMPTS", pipeline.DEFAULT_PROMPTS[:1])
        code = main(["quantize", "--recipe", "w8a16", "--out", str(out), "--json", *SMALL])
    assert code == 0
    return out, json.loads(buf.getvalue())


@pytest.fixture(scope="module")
def saved_w8(quantized_w8) -> Path:
    return quantized_w8[0]


def test_quantize_json_reports_figures(quantized_w8):
    from jaxquant.cli import pipeline

    out, result = quantized_w8
    ev = result["eval"]
    assert result["recipe"] == "w8a16" and ev["tokens_evaluated"] == 2 * 127
    assert 1 < ev["original"]["perplexity"] < 1000
    assert ev["quantized"]["param_bytes"] < ev["original"]["param_bytes"] / 2
    assert len(result["generations"]) == 1
    gen = result["generations"][0]
    assert gen["prompt"] == pipeline.DEFAULT_PROMPTS[0] and gen["original"] and gen["quantized"]
    assert (out / "jaxquant.json").is_file()


def test_eval_restores_checkpoint_and_matches_bytes(capsys, quantized_w8):
    saved, result = quantized_w8
    code, out, _ = run(capsys, "eval", "--model", str(saved), "--json", *SMALL)
    assert code == 0
    ev = json.loads(out)
    assert ev["recipe"] == "w8a16"
    # the restored checkpoint scores what the freshly quantized model scored
    assert ev["quantized"]["perplexity"] == pytest.approx(result["eval"]["quantized"]["perplexity"],
                                                          rel=1e-6)
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
