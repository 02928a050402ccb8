"""Quantization on many devices with JAX's own sharding (Mesh, NamedSharding, shard_map).

    specs = llama_tp_specs(params, cfg, mesh)                  # float PartitionSpecs
    qparams = quantize_sharded(params, "w4a16", mesh, specs)   # QArrays sharded compatibly
    qspecs = tree_specs(qparams, specs, mesh)                  # their PartitionSpecs
    logits, _ = jax.jit(make_tp_apply(model, mesh, qspecs))(qparams, tokens)
"""

from jaxquant.sharding.calibration import quantize_calibrated_dp, reduce_layer_stats
from jaxquant.sharding.checkpoint import restore_on_mesh
from jaxquant.sharding.llama_tp import check_tp_config, layer_kind, llama_tp_specs, local_config
from jaxquant.sharding.memory import collectives, compiled_memory, device_bytes, total_bytes
from jaxquant.sharding.quantize import quantize_sharded
from jaxquant.sharding.row_parallel import row_parallel_dot
from jaxquant.sharding.specs import (
    ShardingError,
    localize,
    localize_tree,
    named_shardings,
    qarray_spec,
    tree_specs,
)
from jaxquant.sharding.tp_forward import init_tp_cache, make_tp_apply

__all__ = [
    "ShardingError",
    "check_tp_config",
    "collectives",
    "compiled_memory",
    "device_bytes",
    "init_tp_cache",
    "layer_kind",
    "llama_tp_specs",
    "local_config",
    "localize",
    "localize_tree",
    "make_tp_apply",
    "named_shardings",
    "qarray_spec",
    "quantize_calibrated_dp",
    "quantize_sharded",
    "reduce_layer_stats",
    "restore_on_mesh",
    "row_parallel_dot",
    "total_bytes",
    "tree_specs",
]
