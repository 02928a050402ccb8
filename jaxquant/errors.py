"""Exceptions raised for bad input. Each message names the offending parameter and the fix."""

from __future__ import annotations


class JaxquantError(ValueError):
    """Base class of every error jaxquant raises for bad input."""


class FormatError(JaxquantError):
    """Unknown format, or a format used where it cannot apply."""


class GranularityError(JaxquantError):
    """A granularity that does not fit the array (e.g. a group size that does not divide the axis)."""


class RecipeError(JaxquantError):
    """A malformed recipe or recipe file."""


class LeafError(JaxquantError):
    """A parameter leaf that cannot be quantized (NaN/Inf, integer, already quantized)."""
