"""Data-parallel GPTQ / AWQ calibration: the calibration batch is split over devices, layer
statistics (Hessians, activation maxima, samples) are reduced across them, and the result is
compared with calibrating on one device.

    python examples/sharded_calibration.py [--devices 8] [--recipe w4a16-gptq] [--windows 16]

GPTQ amplifies float rounding: a Hessian summed in another order (across devices, or on one
device with another batch size) flips some codes by one step, more in later blocks whose inputs
come from the already quantized ones. AWQ and SmoothQuant come out identical.

Without accelerators it simulates --devices CPU devices (XLA_FLAGS, set before jax starts).
"""

import argparse
import os
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--recipe", default="w4a16-gptq")
    parser.add_argument("--windows", type=int, default=16, help="calibration windows of 32")
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    if "jax" not in sys.modules:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.devices}")
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh

    import jaxquant as jq
    from jaxquant.methods.sequential import quantize_calibrated
    from jaxquant.models.llama import Llama, LlamaConfig
    from jaxquant.sharding import quantize_calibrated_dp

    cfg = LlamaConfig(vocab_size=256, d_model=128, n_layers=args.layers, n_heads=4, n_kv_heads=2,
                      head_dim=32, ffn_dim=256, tie_embeddings=False)
    model = Llama(cfg)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    tokens = np.asarray(jax.random.randint(jax.random.key(1), (args.windows, 32), 0, 256))
    mesh = Mesh(np.array(jax.devices()[: args.devices]), ("data",))

    t0 = time.perf_counter()
    one, _ = quantize_calibrated(model, params, args.recipe, tokens, progress=False)
    t1 = time.perf_counter()
    dp, report = quantize_calibrated_dp(model, params, args.recipe, tokens, mesh)
    t2 = time.perf_counter()
    same = total = 0
    for a, b in zip(jax.tree.leaves(dp, is_leaf=jq.is_qarray),
                    jax.tree.leaves(one, is_leaf=jq.is_qarray)):
        if jq.is_qarray(a):
            same += int((np.asarray(a.codes()) == np.asarray(b.codes())).sum())
            total += a.size
    print(f"{args.recipe} on {report.tokens} tokens: one device {t1 - t0:.1f}s, "
          f"{mesh.shape['data']} devices {t2 - t1:.1f}s; identical codes {same}/{total} "
          f"({100 * same / total:.4f}%)")


if __name__ == "__main__":
    main()
