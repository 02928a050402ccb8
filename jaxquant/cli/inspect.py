"""`jaxquant inspect PATH`: what a checkpoint holds, read from headers and manifests only.

Recognizes a jaxquant Orbax directory, a compressed-tensors / GPTQ / AWQ safetensors directory,
or a GGUF file; lists every quantized leaf (scheme, shape, bytes on disk), totals, and the
recipe or quantization config. No tensor data is read.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from jaxquant.errors import JaxquantError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("inspect", help="show the format, quantized leaves and recipe of a "
                       "checkpoint (Orbax, compressed-tensors, GPTQ, AWQ, GGUF)",
                       description="Print a checkpoint's format, every quantized leaf with its "
                                   "scheme and bytes, and its recipe/quantization config.")
    p.add_argument("path", help="checkpoint directory or .gguf file")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _orbax(path: Path) -> dict[str, Any]:
    from jaxquant.checkpoint import read_info
    from jaxquant.checkpoint.manifest import array_entries

    info = read_info(path)
    leaves = []
    for leaf_path, entry in info["tree"].items():
        nbytes = sum(math.prod(e["shape"]) * _itemsize(e["dtype"])
                     for _, e in array_entries(entry, leaf_path))
        if entry["kind"] == "qarray":
            m = entry["meta"]
            leaves.append({"name": leaf_path, "scheme": f"{m['format']} {m['granularity']} "
                           f"block {tuple(m['block_shape'])}", "shape": m["shape"],
                           "bytes": nbytes, "quantized": True})
        else:
            leaves.append({"name": leaf_path, "scheme": entry["dtype"], "shape": entry["shape"],
                           "bytes": nbytes, "quantized": False})
    return {"format": "orbax", "format_version": info["format_version"],
            "library_version": info.get("library_version"), "recipe": info.get("recipe"),
            "base_model": (info.get("extra") or {}).get("model"), "leaves": leaves}


def _itemsize(dtype: str) -> int:
    import jax.numpy as jnp

    return jnp.dtype(dtype).itemsize


def _safetensors_dir(path: Path, fmt: str) -> dict[str, Any]:
    from jaxquant.interop import compressed_tensors, gptq_awq
    from jaxquant.interop.safetensors_io import SafetensorsFile

    if fmt == "compressed-tensors":
        cfg = compressed_tensors.read_config(path)
        qcfg, extra = cfg["quantization_config"], cfg.get("jaxquant", {})
        markers = (".weight_packed", ".weight_scale")
    else:
        qcfg, extra = gptq_awq.read_quant_config(path), {}
        markers = (".qweight",)
    files = sorted(path.glob("model*.safetensors"))
    if not files:
        raise JaxquantError(f"{path}: no model*.safetensors files")
    leaves = []
    for p in files:
        f = SafetensorsFile(p)
        layers = {n.rsplit(".", 1)[0] for n in f.names() if n.endswith(markers)}
        groups: dict[str, list[str]] = {}
        for n in f.names():
            prefix = n.rsplit(".", 1)[0]
            groups.setdefault(prefix if prefix in layers else n, []).append(n)
        for name, members in sorted(groups.items()):
            nbytes = sum(math.prod(f.entries[m][1]) * f.entries[m][0].itemsize for m in members)
            if name in layers:
                leaves.append({"name": name, "scheme": _scheme(fmt, name, qcfg),
                               "shape": None, "bytes": nbytes, "quantized": True,
                               "tensors": sorted(m.rsplit(".", 1)[1] for m in members)})
            else:
                dtype, shape = f.entries[name]
                leaves.append({"name": name, "scheme": str(dtype), "shape": list(shape),
                               "bytes": nbytes, "quantized": False})
    return {"format": fmt, "quantization_config": qcfg, "recipe": extra.get("recipe"),
            "base_model": extra.get("base_model"), "leaves": leaves}


def _scheme(fmt: str, layer: str, qcfg: dict) -> str:
    from jaxquant.interop.compressed_tensors import scheme_for

    if fmt == "compressed-tensors":
        w = scheme_for(layer, qcfg)
        sym = "sym" if w.get("symmetric", True) else "asym"
        group = f" g{w['group_size']}" if w.get("group_size") else ""
        return f"{w.get('type')}{w.get('num_bits')} {sym} {w.get('strategy')}{group} ({w['format']})"
    bits = qcfg.get("bits", qcfg.get("w_bit"))
    act = " act-order" if qcfg.get("desc_act") else ""
    return f"{fmt} int{bits} g{qcfg.get('group_size', qcfg.get('q_group_size'))}{act}"


def _gguf(path: Path) -> dict[str, Any]:
    from jaxquant.interop.gguf_tensors import EXACT
    from jaxquant.models.gguf_loader import open_gguf

    reader = open_gguf(path)
    leaves = []
    for t in reader.tensors:
        name = t.tensor_type.name
        quantized = name not in ("F32", "F16", "BF16", "F64")
        how = " (exact QArray)" if name in EXACT else (" (dequantized on import)"
                                                         if quantized else "")
        leaves.append({"name": t.name, "scheme": name + how,
                       "shape": [int(s) for s in reversed(t.shape)], "bytes": int(t.n_bytes),
                       "quantized": quantized})
    return {"format": "gguf", "recipe": None, "leaves": leaves}


def describe(path: str) -> dict[str, Any]:
    from jaxquant.interop.formats import detect

    p = Path(path)
    fmt = detect(p)
    if fmt == "orbax":
        out = _orbax(p)
    elif fmt == "gguf":
        out = _gguf(p)
    else:
        out = _safetensors_dir(p, fmt)
    leaves = out["leaves"]
    out["path"] = str(p.absolute())
    out["total_bytes"] = sum(leaf["bytes"] for leaf in leaves)
    out["quantized_leaves"] = sum(leaf["quantized"] for leaf in leaves)
    out["quantized_bytes"] = sum(leaf["bytes"] for leaf in leaves if leaf["quantized"])
    out["disk_bytes"] = (p.stat().st_size if p.is_file()
                         else sum(f.stat().st_size for f in p.rglob("*") if f.is_file()))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    result = {"command": "inspect", **describe(args.path)}
    if not args.json:
        c = Console()
        c = c if c.is_terminal else Console(width=150)
        t = Table(title=f"{result['path']}: {result['format']}, {result['quantized_leaves']} "
                        f"quantized of {len(result['leaves'])} leaves, "
                        f"{result['disk_bytes']:,} bytes on disk")
        for col in ("leaf", "scheme", "shape", "bytes"):
            t.add_column(col, justify="right" if col == "bytes" else "left")
        for leaf in result["leaves"]:
            if leaf["quantized"]:
                t.add_row(leaf["name"], leaf["scheme"], str(leaf["shape"] or ""),
                          f"{leaf['bytes']:,}")
        t.add_row("(other leaves)", "", "", f"{result['total_bytes'] - result['quantized_bytes']:,}")
        c.print(t)
        recipe = result.get("recipe")
        if recipe:
            c.print(f"recipe: {recipe.get('name', 'custom')}: {recipe}")
        if result.get("quantization_config"):
            c.print(f"quantization_config: {result['quantization_config']}")
        if result.get("base_model"):
            c.print(f"base model: {result['base_model']}")
    return result
