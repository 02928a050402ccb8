"""PartitionSpecs of quantized leaves, derived from the float parameter's PartitionSpec.

A float parameter of shape S sharded by PartitionSpec P (entry i: None, a mesh axis name or a
tuple of names, splitting S[i] into n_i equal parts of L_i = S[i] / n_i) becomes a QArray whose
  qvalue       is split by the same P: packed 4-bit codes (ceil(S[a] / 2) bytes along the
               contraction axis a) split into L_a / 2 bytes per device, so L_a must be even
               (a byte holds two neighbouring elements);
  scale, zero_point (grid shape G = ceil(S / B)) are split along axis i by P[i] when the block
               B[i] < S[i] (groups along i: L_i must be a multiple of B[i], so that no group
               straddles two devices), and replicated along i when one block spans the whole
               axis (per-channel / per-tensor: every device needs that one scale);
  input_smooth [S[a]] is split like axis a; offset and input_scale (scalars) are replicated.
A nested scale QArray (NVFP4) of grid shape gets the scale's spec by the same rules; one stored
in another layout (NF4 double quantization's flattened grid) is replicated.
A layout that would split a group or a packed byte raises ShardingError naming the parameter,
the sizes and the fix; nothing is ever regrouped silently.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxquant.core.qarray import QArray, QMeta
from jaxquant.errors import JaxquantError
from jaxquant.formats.registry import get_format
from jaxquant.tree_paths import flatten, is_leaf, path_str

P = PartitionSpec


class ShardingError(JaxquantError):
    """A mesh layout that cannot hold a parameter (or its quantization groups) evenly."""


def is_spec(x: Any) -> bool:
    return isinstance(x, PartitionSpec)


def axis_size(mesh: Mesh, entry: Any) -> int:
    """Devices along one PartitionSpec entry (None, a mesh axis name or a tuple of names)."""
    if entry is None:
        return 1
    names = entry if isinstance(entry, tuple) else (entry,)
    for n in names:
        if n not in mesh.shape:
            raise ShardingError(f"mesh axis {n!r} is not in the mesh (axes: {tuple(mesh.shape)})")
    return math.prod(mesh.shape[n] for n in names)


def _entries(spec: PartitionSpec, ndim: int, name: str) -> tuple[Any, ...]:
    if len(spec) > ndim:
        raise ShardingError(f"{name}: PartitionSpec {spec} has {len(spec)} entries for a "
                            f"{ndim}-D parameter; give at most {ndim}")
    return tuple(spec) + (None,) * (ndim - len(spec))


def _divisors_hint(n: int) -> str:
    good = [g for g in (16, 32, 64, 128, 256, 512) if n % g == 0]
    return ", ".join(map(str, good)) if good else "none of 16..512"


def check_array_spec(shape: tuple[int, ...], spec: PartitionSpec, mesh: Mesh, name: str) -> None:
    """ShardingError unless every sharded axis of `shape` splits evenly over its devices."""
    for i, (s, e) in enumerate(zip(shape, _entries(spec, len(shape), name))):
        n = axis_size(mesh, e)
        if s % n:
            raise ShardingError(
                f"{name}: axis {i} of size {s} does not split evenly over {n} devices (mesh axis "
                f"{e!r}); shard another axis or use a mesh axis whose size divides {s}"
            )


def _grid_entries(meta: QMeta, entries: tuple[Any, ...], mesh: Mesh, name: str,
                  packed: bool) -> tuple[Any, ...]:
    """Entries of the scale grid, checking that no group or packed byte straddles devices."""
    out = []
    for i, (s, b, g, e) in enumerate(zip(meta.shape, meta.block_shape, meta.grid, entries)):
        n = axis_size(mesh, e)
        if n == 1:
            out.append(None)
            continue
        local = s // n
        if packed and i == meta.axis and local % 2:
            raise ShardingError(
                f"{name}: {meta.format} packs two codes per byte along axis {i}; splitting its "
                f"{s} elements over {n} devices ({e!r}) gives {local} per device, so one byte "
                f"would straddle two devices. Use a mesh axis that leaves an even count per "
                f"device, or shard another axis"
            )
        if g == 1:  # one block spans the axis: its scale is needed whole on every device
            out.append(None)
            continue
        if local % b:
            raise ShardingError(
                f"{name}: axis {i} of size {s} split over {n} devices ({e!r}) gives {local} "
                f"elements per device, which splits the quantization groups of {b} along it "
                f"across devices. Use a group size that divides {local} (here: "
                f"{_divisors_hint(local)}), shard another axis, or quantize per channel"
            )
        out.append(e)
    return tuple(out)


def qarray_spec(q: QArray, spec: PartitionSpec, mesh: Mesh, name: str = "<qarray>") -> QArray:
    """The QArray-shaped pytree of PartitionSpecs for quantized leaf `q` whose float parameter
    is sharded by `spec` (see the module docstring). Raises ShardingError for bad layouts."""
    meta = q.meta
    entries = _entries(spec, len(meta.shape), name)
    check_array_spec(meta.shape, spec, mesh, name)
    packed = get_format(meta.format).codec.packed
    grid_entries = _grid_entries(meta, entries, mesh, name, packed)
    grid_spec = P(*grid_entries)
    if isinstance(q.scale, QArray):
        nested = q.scale
        scale: Any = (qarray_spec(nested, grid_spec, mesh, name + ".scale")
                      if nested.meta.shape == meta.grid
                      else jax.tree.map(lambda _: P(), nested))
    else:
        scale = grid_spec
    return dataclasses.replace(
        q,
        qvalue=P(*entries),
        scale=scale,
        zero_point=None if q.zero_point is None else grid_spec,
        offset=None if q.offset is None else P(),
        input_scale=None if q.input_scale is None else P(),
        input_smooth=None if q.input_smooth is None else P(entries[meta.axis]),
    )


def tree_specs(tree: Any, float_specs: Any, mesh: Mesh) -> Any:
    """PartitionSpecs for every leaf of `tree` (float arrays and QArrays, real or abstract) from
    `float_specs`, a tree of PartitionSpec with the float parameters' structure (or a dict
    {path: PartitionSpec}; paths not in it are replicated). QArray leaves get qarray_spec."""
    if isinstance(float_specs, dict) and all(is_spec(v) for v in float_specs.values()):
        by_path = dict(float_specs)
    else:
        by_path = dict(_path_leaves(float_specs))
    items, treedef = flatten(tree)
    out = []
    for path, leaf in items:
        spec = by_path.get(path, P())
        if isinstance(leaf, QArray):
            out.append(qarray_spec(leaf, spec, mesh, path))
        else:
            check_array_spec(tuple(leaf.shape), spec, mesh, path)
            out.append(spec)
    return jax.tree_util.tree_unflatten(treedef, out)


def _path_leaves(specs: Any) -> list[tuple[str, PartitionSpec]]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(specs, is_leaf=is_spec)
    return [(path_str(p), s) for p, s in leaves]


def named_shardings(specs: Any, mesh: Mesh) -> Any:
    """A tree of PartitionSpecs (QArrays of specs included) -> the same tree of NamedShardings."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=is_spec)


def local_meta(meta: QMeta, local_shape: tuple[int, ...]) -> QMeta:
    """Metadata of one device's block of a QArray: the local logical shape; a block that spans
    a whole (now split) axis spans the local axis instead."""
    block = tuple(lb if g == 1 else b for lb, b, g in zip(local_shape, meta.block_shape,
                                                           meta.grid))
    return dataclasses.replace(meta, shape=tuple(local_shape), block_shape=block)


def localize(q: QArray) -> QArray:
    """Inside shard_map: a QArray whose array fields are one device's blocks but whose metadata
    is still global -> the QArray of that block alone (dequantize, kernels and dots then see
    consistent shapes). Logical local shape comes from the local codes."""
    meta = q.meta
    shape = list(q.qvalue.shape)
    if get_format(meta.format).codec.packed:
        # packed axis: 2 codes a byte (an odd global size only occurs unsplit)
        full = meta.shape[meta.axis]
        shape[meta.axis] = full if -(-full // 2) == shape[meta.axis] else 2 * shape[meta.axis]
    new_meta = local_meta(meta, tuple(shape))
    scale = q.scale
    if isinstance(scale, QArray) and scale.meta.shape == meta.grid:
        scale = localize(scale)
    return dataclasses.replace(q, meta=new_meta, scale=scale)


def localize_tree(tree: Any) -> Any:
    """localize every QArray leaf of a parameter tree (inside shard_map)."""
    return jax.tree.map(lambda x: localize(x) if isinstance(x, QArray) else x, tree,
                        is_leaf=is_leaf)
