"""The bundled texts: sizes in SmolLM2 tokens, no overlap between calibration and evaluation."""

from __future__ import annotations

import pytest

from jaxquant.errors import JaxquantError
from jaxquant.evaluation.text import calibration_text, evaluation_text, read_text


def test_sizes_and_disjoint(smollm2):
    ev, cal = evaluation_text(), calibration_text()
    assert ev.startswith("CHAPTER I\n") and cal.startswith("Chapter 1\n")
    assert len(smollm2.tokenizer.encode(ev)) >= 60_000
    assert 35_000 <= len(smollm2.tokenizer.encode(cal)) <= 45_000
    paragraphs = lambda t: {p.strip() for p in t.split("\n\n") if len(p.strip()) > 80}  # noqa: E731
    assert not paragraphs(ev) & paragraphs(cal)


def test_read_text(tmp_path):
    text, label = read_text(None)
    assert text == evaluation_text() and "austen_emma" in label
    f = tmp_path / "t.txt"
    f.write_text("hello")
    assert read_text(f) == ("hello", str(f))
    with pytest.raises(JaxquantError, match="does not exist"):
        read_text(tmp_path / "missing.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(JaxquantError, match="not UTF-8"):
        read_text(tmp_path / "bin.txt")
