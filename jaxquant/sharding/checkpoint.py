"""Restoring an Orbax quantized checkpoint directly onto a mesh: every stored array (packed
codes, scales, zero-points) is read shard by shard into the layout jaxquant.sharding.specs
derives from the float parameters' PartitionSpecs; no device or host ever holds a whole leaf."""

from __future__ import annotations

import os
from typing import Any

from jax.sharding import Mesh

from jaxquant.checkpoint import orbax_io
from jaxquant.recipes.recipe import Recipe
from jaxquant.sharding.specs import named_shardings, tree_specs


def restore_on_mesh(path: str | os.PathLike, mesh: Mesh, float_specs: Any
                    ) -> tuple[dict, Recipe | None, dict]:
    """(tree, recipe, info) of the checkpoint at `path`, sharded on `mesh`. float_specs: a tree
    of PartitionSpec like the float parameters (or {path: PartitionSpec}); a layout that would
    split a quantization group raises ShardingError before any array is read."""
    ckpt = orbax_io.Checkpoint(path)
    shardings = named_shardings(tree_specs(ckpt.abstract(), float_specs, mesh), mesh)
    return ckpt.restore(shardings), ckpt.recipe, ckpt.info
