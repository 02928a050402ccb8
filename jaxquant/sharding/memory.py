"""Per-device memory of sharded trees and compiled programs (to show that nothing is gathered)."""

from __future__ import annotations

from typing import Any

import jax


def device_bytes(tree: Any) -> dict[str, int]:
    """Bytes of the arrays of `tree` held by each device: {str(device): bytes} summed over
    `.addressable_shards` (a replicated array counts once per device holding it)."""
    out: dict[str, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            key = str(shard.device)
            out[key] = out.get(key, 0) + int(shard.data.nbytes)
    return out


def total_bytes(tree: Any) -> int:
    """Logical bytes of the arrays of `tree` (each array once, whatever its sharding)."""
    return sum(int(leaf.nbytes) for leaf in jax.tree.leaves(tree))


def compiled_memory(compiled: Any) -> dict[str, int]:
    """Per-device argument / output / temporary bytes of a compiled SPMD program, from XLA's
    memory analysis (empty where the backend gives none)."""
    stats = compiled.memory_analysis()
    if stats is None:
        return {}
    keys = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
            "alias_size_in_bytes")
    return {k.replace("_size_in_bytes", "_bytes"): int(getattr(stats, k)) for k in keys
            if hasattr(stats, k)}


def collectives(compiled: Any) -> dict[str, int]:
    """How many all-gather / all-reduce / all-to-all / collective-permute ops the compiled
    (optimized) program holds."""
    text = compiled.as_text()
    ops = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")
    return {op: text.count(f" {op}(") + text.count(f" {op}-start(") for op in ops}


def live_device_memory() -> dict[str, dict[str, int]]:
    """{device: {bytes_in_use, peak_bytes_in_use}} from the runtime where it reports them
    (GPU); empty on backends without memory stats (CPU)."""
    out = {}
    for d in jax.local_devices():
        stats = d.memory_stats()
        if stats:
            out[str(d)] = {k: int(stats[k]) for k in ("bytes_in_use", "peak_bytes_in_use")
                           if k in stats}
    return out
