"""Saving and restoring quantized parameter trees."""

from jaxquant.checkpoint.orbax_io import read_info, restore, save

__all__ = ["read_info", "restore", "save"]
