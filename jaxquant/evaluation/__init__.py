"""Evaluation: perplexity on bundled or user text."""

from jaxquant.evaluation.perplexity import PerplexityResult, perplexity, windows
from jaxquant.evaluation.text import calibration_text, evaluation_text, read_text

__all__ = [
    "PerplexityResult",
    "calibration_text",
    "evaluation_text",
    "perplexity",
    "read_text",
    "windows",
]
