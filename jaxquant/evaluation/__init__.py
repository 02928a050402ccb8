"""Evaluation: perplexity on bundled or user text."""

from jaxquant.evaluation.perplexity import PerplexityResult, perplexity
from jaxquant.evaluation.text import read_text

__all__ = ["PerplexityResult", "perplexity", "read_text"]
