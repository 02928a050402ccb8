"""Per-leaf report of a quantized tree: formats, bytes before/after, round-trip error."""

from __future__ import annotations

import dataclasses
import io
import re
from typing import Any

import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.table import Table

from jaxquant.core.qarray import QArray
from jaxquant.tree_paths import flatten


@dataclasses.dataclass(frozen=True)
class LeafRow:
    path: str
    shape: tuple[int, ...]
    format: str
    granularity: str
    bytes_before: int
    bytes_after: int
    rel_error: float | None  # ||W - dequant(Q)||_F / ||W||_F, None without a reference
    size: int = 0  # number of parameters


@dataclasses.dataclass(frozen=True)
class Summary:
    rows: tuple[LeafRow, ...]
    float_leaves: int
    float_bytes: int

    @property
    def quantized_bytes_before(self) -> int:
        return sum(r.bytes_before for r in self.rows)

    @property
    def quantized_bytes_after(self) -> int:
        return sum(r.bytes_after for r in self.rows)

    @property
    def total_bytes_before(self) -> int:
        return self.quantized_bytes_before + self.float_bytes

    @property
    def total_bytes_after(self) -> int:
        return self.quantized_bytes_after + self.float_bytes

    @property
    def compression(self) -> float:
        return self.total_bytes_before / max(self.total_bytes_after, 1)

    def to_dict(self) -> dict:
        return {
            "leaves": [dataclasses.asdict(r) for r in self.rows],
            "float_leaves": self.float_leaves,
            "float_bytes": self.float_bytes,
            "bytes_before": self.total_bytes_before,
            "bytes_after": self.total_bytes_after,
            "compression": self.compression,
        }

    def table(self) -> Table:
        t = Table(title="jaxquant summary", show_footer=True)
        t.add_column("parameter", footer="total")
        t.add_column("shape")
        t.add_column("format")
        t.add_column("bytes before", justify="right", footer=f"{self.total_bytes_before:,}")
        t.add_column("bytes after", justify="right", footer=f"{self.total_bytes_after:,}")
        t.add_column("bits/param", justify="right")
        t.add_column("rel. error", justify="right", footer=f"{self.compression:.2f}x smaller")
        for r in self.rows:
            bits = 8 * r.bytes_after / max(r.size, 1)
            err = "-" if r.rel_error is None else f"{r.rel_error:.2e}"
            t.add_row(r.path, "x".join(map(str, r.shape)), f"{r.format} ({r.granularity})",
                      f"{r.bytes_before:,}", f"{r.bytes_after:,}", f"{bits:.2f}", err)
        if self.float_leaves:
            t.add_row(f"({self.float_leaves} leaves kept in float)", "", "", f"{self.float_bytes:,}",
                      f"{self.float_bytes:,}", "", "")
        return t

    def grouped(self) -> "Summary":
        """Rows merged across repeated blocks: 'layers_3/attn/q_proj/kernel' and its siblings in
        other layers become one row 'layers_*/attn/q_proj/kernel' (shape of the first, bytes
        summed, error averaged)."""
        groups: dict[tuple[str, str], list[LeafRow]] = {}
        for r in self.rows:
            key = (re.sub(r"(layers?|blocks?|h)_\d+", r"\1_*", r.path), r.format)
            groups.setdefault(key, []).append(r)
        rows = []
        for (path, fmt), rs in groups.items():
            errs = [r.rel_error for r in rs if r.rel_error is not None]
            rows.append(LeafRow(
                f"{path} (x{len(rs)})" if len(rs) > 1 else path, rs[0].shape, fmt,
                rs[0].granularity, sum(r.bytes_before for r in rs),
                sum(r.bytes_after for r in rs), sum(errs) / len(errs) if errs else None,
                sum(r.size for r in rs),
            ))
        return Summary(tuple(rows), self.float_leaves, self.float_bytes)

    def render(self) -> str:
        buf = io.StringIO()
        Console(file=buf, width=140, force_terminal=False).print(self.table())
        return buf.getvalue()

    def __str__(self) -> str:
        return self.render()


def _rel_error(ref: Any, q: QArray) -> float:
    ref = jnp.asarray(ref, jnp.float32)
    num = float(jnp.linalg.norm((q.dequantize(jnp.float32) - ref).ravel()))
    den = float(jnp.linalg.norm(ref.ravel()))
    return num / den if den > 0 else num


def summary(qparams: Any, reference: Any = None) -> Summary:
    """Summarize a quantized tree; with `reference` (the float tree it came from) also the
    relative round-trip error of every quantized leaf."""
    items, _ = flatten(qparams)
    refs = dict(flatten(reference)[0]) if reference is not None else {}
    rows, n_float, float_bytes = [], 0, 0
    for path, leaf in items:
        if isinstance(leaf, QArray):
            err = _rel_error(refs[path], leaf) if path in refs else None
            rows.append(LeafRow(path, leaf.shape, leaf.format, leaf.meta.granularity,
                                leaf.logical_nbytes, leaf.nbytes, err, leaf.size))
        elif hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
            n_float += 1
            float_bytes += int(np.prod(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize
    return Summary(tuple(rows), n_float, float_bytes)
