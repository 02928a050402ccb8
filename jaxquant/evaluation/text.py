"""The bundled evaluation and calibration texts (jaxquant/data, see its README.md).

They come from two different novels, so calibration never sees evaluation text.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from jaxquant.errors import JaxquantError

EVAL_TEXT = "austen_emma_eval.txt"
CALIB_TEXT = "austen_persuasion_calib.txt"


def bundled_path(name: str) -> Path:
    """Path of a file in jaxquant/data."""
    return Path(str(resources.files("jaxquant.data").joinpath(name)))


def evaluation_text() -> str:
    """The evaluation slice (Emma; >= 60k SmolLM2 tokens)."""
    return bundled_path(EVAL_TEXT).read_text(encoding="utf-8")


def calibration_text() -> str:
    """The calibration slice (Persuasion; ~40k SmolLM2 tokens)."""
    return bundled_path(CALIB_TEXT).read_text(encoding="utf-8")


def read_text(path: str | os.PathLike | None = None, default: str = EVAL_TEXT) -> tuple[str, str]:
    """(text, label): a user's UTF-8 text file, or the bundled `default` text when path is None."""
    if path is None:
        return bundled_path(default).read_text(encoding="utf-8"), f"bundled {default}"
    p = Path(path)
    if not p.is_file():
        raise JaxquantError(f"text file {str(p)!r} does not exist")
    try:
        return p.read_text(encoding="utf-8"), str(p)
    except UnicodeDecodeError as e:
        raise JaxquantError(f"text file {str(p)!r} is not UTF-8 text: {e}") from None
