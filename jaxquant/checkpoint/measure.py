"""Checkpoint sizes on disk and save/restore times for SmolLM2-135M, per recipe and format.

    python -m jaxquant.checkpoint.measure [--repeats 3] [--json-out FILE]

Rows: bf16 (every leaf bf16) and, per recipe, the tree `jaxquant quantize` saves (quantized
layers; embeddings and norms in f32, the default ignore list) and the same with the unquantized
leaves cast to bf16 (the like-for-like comparison with the bf16 checkpoint). Formats: Orbax, and
compressed-tensors where the scheme has an equivalent (int8 per channel; int4 with groups that
divide 576 and 1536, hence the g64 row; NF4 and w4a16's ragged g128 groups have none). Times are
medians over --repeats runs on this machine (wall clock, page cache warm); restore includes
reading every array into device memory. Writes JSON with the date and device and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp

import jaxquant as jq
from jaxquant.core.qarray import QArray
from jaxquant.tree_paths import flatten, map_with_path

RESULTS = Path(__file__).resolve().parent.parent / "evaluation" / "results"


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def rest_to_bf16(tree: Any) -> Any:
    """Unquantized float leaves cast to bf16; QArrays untouched."""
    return map_with_path(lambda _, x: x if isinstance(x, QArray) or not jnp.issubdtype(
        x.dtype, jnp.floating) else x.astype(jnp.bfloat16), tree)


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        jax.block_until_ready(jax.tree_util.tree_leaves(out))
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def g64_recipe() -> jq.Recipe:
    import dataclasses

    base = jq.get_preset("w4a16")
    rules = tuple(dataclasses.replace(r, weight=dataclasses.replace(r.weight, group_size=64))
                  for r in base.rules)
    return jq.Recipe(rules, ignore=base.ignore, name="w4a16-g64")


def measure(params: Any, label: str, recipe: Any, fmt: str, work: Path, repeats: int
            ) -> dict[str, Any]:
    from jaxquant.interop import formats

    path = work / f"{label}-{fmt}"

    def save() -> Path:
        return formats.save(path, params, recipe, format=fmt, base_model="smollm2-135m",
                            overwrite=True)

    def restore() -> Any:
        return formats.load(path)[0]

    save_s, _ = timed(save, repeats)
    restore_s, restored = timed(lambda: jax.tree_util.tree_map(jnp.asarray, restore()), repeats)
    qleaves = [leaf for _, leaf in flatten(params)[0] if isinstance(leaf, QArray)]
    q_bytes = sum(leaf.nbytes for leaf in qleaves)
    row = {"checkpoint": label, "format": fmt, "disk_bytes": dir_bytes(path),
           "quantized_layer_bytes": q_bytes,
           "quantized_layers_vs_bf16": q_bytes / max(2 * sum(q.size for q in qleaves), 1),
           "save_seconds": save_s,
           "restore_seconds": restore_s, "files": len([f for f in path.rglob("*") if f.is_file()])}
    row["restored_identical"] = identical(params, restored)
    shutil.rmtree(path)
    return row


def identical(a: Any, b: Any) -> bool:
    """Same leaf paths (QArray fields included), dtypes, shapes and bits."""
    la = dict(jax.tree_util.tree_leaves_with_path(a))
    lb = dict(jax.tree_util.tree_leaves_with_path(b))
    return la.keys() == lb.keys() and all(
        la[k].dtype == lb[k].dtype and la[k].shape == lb[k].shape
        and bool(jnp.all(jnp.atleast_1d(la[k]).view(jnp.uint8)
                         == jnp.atleast_1d(lb[k]).view(jnp.uint8))) for k in la)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--recipes", default="w8a16,w4a16,w4a16-g64,nf4")
    parser.add_argument("--json-out", default=None, help="default: jaxquant/evaluation/results/"
                        "<date>-<platform>-smollm2-checkpoints.json")
    args = parser.parse_args(argv)

    from jaxquant.models import load_model

    model = load_model(args.model)
    types = jq.linen_module_types(model.module, jnp.zeros((1, 8), jnp.int32))
    work = Path(tempfile.mkdtemp(prefix="jq-ckpt-measure-"))
    rows = []
    try:
        bf16 = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), model.params)
        for fmt in ("orbax", "compressed-tensors"):
            rows.append(measure(bf16, "bf16", None, fmt, work, args.repeats))
        for name in args.recipes.split(","):
            recipe = g64_recipe() if name == "w4a16-g64" else jq.get_preset(name)
            q = jq.quantize(model.params, recipe, module_types=types)
            for label, tree in ((name, q), (f"{name} (rest bf16)", rest_to_bf16(q))):
                fmts = ["orbax"] + (["compressed-tensors"] if name in ("w8a16", "w4a16-g64")
                                    else [])
                for fmt in fmts:
                    row = measure(tree, label, recipe, fmt, work, args.repeats)
                    row["recipe"] = name
                    rows.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = {r["format"]: r["disk_bytes"] for r in rows if r["checkpoint"] == "bf16"}
    for r in rows:
        r["vs_bf16"] = r["disk_bytes"] / base[r["format"]]
    dev = jax.devices()[0]
    result = {
        "date": datetime.date.today().isoformat(), "model": args.model,
        "device": {"platform": dev.platform, "kind": dev.device_kind,
                   "cpu_count": os.cpu_count(), "machine": platform.machine()},
        "versions": {"jax": jax.__version__, "jaxquant": jq.__version__,
                     "orbax": _version("orbax-checkpoint"), "safetensors": _version("safetensors")},
        "repeats": args.repeats, "rows": rows,
    }
    out = Path(args.json_out or RESULTS / f"{result['date']}-{dev.platform}-smollm2-checkpoints"
                                          ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print("| checkpoint | format | bytes on disk | vs bf16 | quantized layers vs bf16 | save s "
          "| restore s |\n|---|---|---|---|---|---|---|")
    for r in rows:
        ql = f"{r['quantized_layers_vs_bf16']:.3f}" if r["quantized_layer_bytes"] else ""
        print(f"| {r['checkpoint']} | {r['format']} | {r['disk_bytes']:,} | {r['vs_bf16']:.3f} | "
              f"{ql} | {r['save_seconds']:.2f} | {r['restore_seconds']:.2f} |")
    print(f"wrote {out}")
    return result


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    main()
