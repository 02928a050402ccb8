"""Validated reading of safetensors files (the format has no code in it; nothing is unpickled).

A file is: 8 bytes little-endian header length N, N bytes of JSON {name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {str: str}}, then the data. Every entry is
checked (known dtype, non-negative shape, offsets inside the file, end - begin equal to
prod(shape) * itemsize, no overlaps) before any tensor is read; a tensor is then read alone
(numpy.memmap view copied out), so a damaged file fails naming the tensor without allocating
the rest. Writing goes through the `safetensors` package's numpy API.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from jaxquant.errors import JaxquantError

MAX_HEADER = 100 * 1024 * 1024  # the safetensors package's own limit

DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "U8": np.dtype(np.uint8), "I8": np.dtype(np.int8),
    "U16": np.dtype(np.uint16), "I16": np.dtype(np.int16), "U32": np.dtype(np.uint32),
    "I32": np.dtype(np.int32), "U64": np.dtype(np.uint64), "I64": np.dtype(np.int64),
    "F16": np.dtype(np.float16), "BF16": np.dtype(ml_dtypes.bfloat16),
    "F32": np.dtype(np.float32), "F64": np.dtype(np.float64),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}


class SafetensorsError(JaxquantError):
    """A safetensors file that is truncated, corrupted or not what its header says."""


class SafetensorsFile:
    """A validated safetensors file: .entries {name: (dtype, shape)}, .metadata, .read(name)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise SafetensorsError(f"safetensors file {str(self.path)!r} does not exist")
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise SafetensorsError(f"{self.path}: truncated: {size} bytes, shorter than the "
                                       "8-byte header length")
            n = int.from_bytes(head, "little")
            if n > MAX_HEADER or 8 + n > size:
                raise SafetensorsError(f"{self.path}: header length {n} does not fit the file "
                                       f"({size} bytes); the file is truncated or corrupted")
            raw = f.read(n)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsError(f"{self.path}: corrupted header JSON: {e}") from None
        if not isinstance(header, dict):
            raise SafetensorsError(f"{self.path}: corrupted header: not a JSON object")
        meta = header.pop("__metadata__", {}) or {}
        if not isinstance(meta, dict):
            raise SafetensorsError(f"{self.path}: __metadata__ is not an object")
        self.metadata: dict[str, str] = meta
        self._data_start = 8 + n
        data_size = size - self._data_start
        self.entries: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
        self._offsets: dict[str, tuple[int, int]] = {}
        spans = []
        for name, e in header.items():
            dtype, shape, (begin, end) = self._check_entry(name, e, data_size)
            self.entries[name] = (dtype, shape)
            self._offsets[name] = (begin, end)
            if end > begin:
                spans.append((begin, end, name))
        spans.sort()
        for (_, end_a, a), (begin_b, _, b) in zip(spans, spans[1:]):
            if begin_b < end_a:
                raise SafetensorsError(f"{self.path}: tensors {a!r} and {b!r} overlap")

    def _check_entry(self, name: str, e: Any, data_size: int
                     ) -> tuple[np.dtype, tuple[int, ...], tuple[int, int]]:
        where = f"{self.path}: tensor {name!r}"
        if not isinstance(e, dict):
            raise SafetensorsError(f"{where}: malformed header entry")
        if e.get("dtype") not in DTYPES:
            raise SafetensorsError(f"{where}: unknown dtype {e.get('dtype')!r} (known: "
                                   f"{', '.join(DTYPES)})")
        shape = e.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise SafetensorsError(f"{where}: bad shape {shape!r}")
        offs = e.get("data_offsets")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) and o >= 0 for o in offs) or offs[1] < offs[0]):
            raise SafetensorsError(f"{where}: bad data_offsets {offs!r}")
        dtype = DTYPES[e["dtype"]]
        want = math.prod(shape) * dtype.itemsize
        if offs[1] - offs[0] != want:
            raise SafetensorsError(f"{where}: {e['dtype']}{shape} needs {want} bytes, the header "
                                   f"gives it {offs[1] - offs[0]}")
        if offs[1] > data_size:
            raise SafetensorsError(f"{where}: ends at byte {offs[1]} of the data, which has "
                                   f"{data_size}; the file is truncated")
        return dtype, tuple(shape), (offs[0], offs[1])

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        return list(self.entries)

    def read(self, name: str) -> np.ndarray:
        """One tensor as a numpy array (a copy; the file is not kept open)."""
        if name not in self.entries:
            raise SafetensorsError(f"{self.path}: no tensor {name!r}")
        dtype, shape = self.entries[name]
        begin, end = self._offsets[name]
        if end == begin:
            return np.zeros(shape, dtype)
        view = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self._data_start + begin,
                         shape=(end - begin,))
        return np.array(view).view(dtype).reshape(shape)


def write(path: str | os.PathLike, tensors: dict[str, np.ndarray],
          metadata: dict[str, str] | None = None) -> None:
    """Write numpy arrays with the safetensors package (atomic: temp file renamed into place)."""
    from safetensors.numpy import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp),
              metadata=metadata)
    os.replace(tmp, path)
