"""Per-device memory of quantizing a tensor-parallel Llama under jit, against one device.

For each recipe: quantize_sharded on a ("data", "model") mesh (Llama tensor-parallel layout),
then the same jaxquant.quantize on one device. Reports the bytes each device holds before
(float shards) and after (QArray shards), XLA's per-device argument / temporary bytes of the
compiled program, the collectives it contains (no all-gather: nothing is gathered), and whether
every code and scale equals the single-device result bit for bit.

    python -m jaxquant.sharding.measure_quantize [--devices 8] [--tp 4] [--d-model 1024]

Without accelerators it simulates --devices CPU devices. Writes
jaxquant/evaluation/results/2026-11-25-<device>-sharded-quantize.json (or --out).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import warnings
from pathlib import Path

RECIPES = ("w4a16-g32", "w8a8-int8", "nvfp4")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--tp", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        # read when the CPU backend starts (first device use), so importing jax before is fine
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.devices}")
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh

    import jaxquant as jq
    from jaxquant.models.llama import Llama, LlamaConfig
    from jaxquant.sharding import (collectives, compiled_memory, device_bytes, llama_tp_specs,
                                   quantize_sharded, total_bytes)

    d = args.d_model
    cfg = LlamaConfig(vocab_size=4096, d_model=d, n_layers=args.layers, n_heads=16,
                      n_kv_heads=8, head_dim=d // 16, ffn_dim=4 * d, tie_embeddings=False)
    params = jax.eval_shape(Llama(cfg).init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    params = jax.tree.map(lambda s: jax.random.normal(jax.random.key(1), s.shape, s.dtype) * 0.02,
                          params)
    devices = jax.devices()[: args.devices]
    mesh = Mesh(np.array(devices).reshape(-1, args.tp), ("data", "model"))
    specs = llama_tp_specs(params, cfg, mesh)
    float_per_device = max(device_bytes(jax.device_put(
        params, jax.tree.map(lambda s: jax.sharding.NamedSharding(mesh, s), specs,
                             is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    )).values())
    rows = []
    for name in RECIPES:
        int4 = jq.WeightScheme("int4", group_size=32, scale_dtype="bfloat16")
        recipe = (jq.Recipe((jq.Rule(("re:kernel$",), int4),), name=name)
                  if name == "w4a16-g32" else name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q, compiled = quantize_sharded(params, recipe, mesh, specs, return_compiled=True)
            ref = jq.quantize(jax.device_put(params, devices[0]), recipe)
        exact = all(np.array_equal(np.atleast_1d(np.asarray(a)).view(np.uint8),
                                   np.atleast_1d(np.asarray(b)).view(np.uint8))
                    for a, b in zip(jax.tree.leaves(q), jax.tree.leaves(ref)))
        rows.append({"recipe": name, "float_bytes_total": total_bytes(params),
                     "float_bytes_per_device": float_per_device,
                     "quantized_bytes_total": total_bytes(q),
                     "quantized_bytes_per_device": max(device_bytes(q).values()),
                     "compiled_per_device": compiled_memory(compiled),
                     "collectives": collectives(compiled), "bit_exact_vs_one_device": exact})
    result = {"date": datetime.date.today().isoformat(), "device": devices[0].device_kind,
              "platform": devices[0].platform, "devices": len(devices), "jax": jax.__version__,
              "mesh": dict(mesh.shape), "model": {"d_model": d, "n_layers": args.layers,
                                                  "ffn_dim": 4 * d, "vocab": 4096},
              "rows": rows}
    print("| recipe | float total | float per device | quantized total | quantized per device "
          "| program args / temp per device | all-gathers | bit-exact |")
    print("|---|---|---|---|---|---|---|---|")
    mib = lambda n: f"{n / 2**20:.1f} MiB"  # noqa: E731
    for r in rows:
        c = r["compiled_per_device"]
        print(f"| {r['recipe']} | {mib(r['float_bytes_total'])} | "
              f"{mib(r['float_bytes_per_device'])} | {mib(r['quantized_bytes_total'])} | "
              f"{mib(r['quantized_bytes_per_device'])} | {mib(c.get('argument_bytes', 0))} / "
              f"{mib(c.get('temp_bytes', 0))} | {r['collectives']['all-gather']} | "
              f"{r['bit_exact_vs_one_device']} |")
    out = Path(args.out) if args.out else (
        Path(__file__).resolve().parent.parent / "evaluation" / "results"
        / f"2026-11-25-{result['platform']}-sharded-quantize.json")
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
