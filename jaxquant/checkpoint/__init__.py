"""Saving and restoring quantized parameter trees (Orbax, JSON manifest, no pickles)."""

from jaxquant.checkpoint.orbax_io import (
    Checkpoint,
    abstract,
    check_tree,
    open_checkpoint,
    read_info,
    restore,
    save,
)

__all__ = ["Checkpoint", "abstract", "check_tree", "open_checkpoint", "read_info", "restore",
           "save"]
