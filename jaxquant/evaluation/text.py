"""The bundled evaluation and calibration texts."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from jaxquant.errors import JaxquantError

EVAL_TEXT = "austen_emma_eval.txt"
CALIB_TEXT = "austen_persuasion_calib.txt"


def bundled_path(name: str) -> Path:
    return Path(str(resources.files("jaxquant.data").joinpath(name)))


def read_text(path: str | os.PathLike | None = None, default: str = EVAL_TEXT) -> tuple[str, str]:
    """(text, label): a user's plain-text file, or the bundled `default` text when path is None."""
    if path is None:
        p = bundled_path(default)
        return p.read_text(encoding="utf-8"), f"bundled {default}"
    p = Path(path)
    if not p.is_file():
        raise JaxquantError(f"text file {str(p)!r} does not exist")
    try:
        return p.read_text(encoding="utf-8"), str(p)
    except UnicodeDecodeError as e:
        raise JaxquantError(f"text file {str(p)!r} is not UTF-8 text: {e}") from None
