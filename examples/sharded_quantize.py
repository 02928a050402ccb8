"""Quantize a Llama sharded over a mesh, run it tensor-parallel, save and restore onto the mesh.

    python examples/sharded_quantize.py [--devices 8] [--tp 4] [--d-model 256] [--group 32]

Without accelerators it simulates --devices CPU devices (XLA_FLAGS, set before jax starts).
"""

import argparse
import os
import sys
import tempfile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--tp", type=int, default=4, help="size of the model (tensor) axis")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--group", type=int, default=32, help="int4 group size along K")
    args = parser.parse_args()
    if "jax" not in sys.modules:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.devices}")
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    import jaxquant as jq
    from jaxquant import checkpoint, sharding
    from jaxquant.inference import dispatch
    from jaxquant.models.llama import Llama, LlamaConfig

    d = args.d_model
    cfg = LlamaConfig(vocab_size=512, d_model=d, n_layers=2, n_heads=8, n_kv_heads=4,
                      head_dim=d // 8, ffn_dim=2 * d, tie_embeddings=False)
    model = Llama(cfg)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    devices = np.array(jax.devices()[: args.devices])
    mesh = Mesh(devices.reshape(-1, args.tp), ("data", "model"))
    recipe = jq.Recipe((jq.Rule(("re:kernel$",), jq.WeightScheme(
        "int4", group_size=args.group, scale_dtype="bfloat16")),), name=f"w4a16-g{args.group}")

    # 1. quantize under jit on the sharded float parameters (column/row-parallel layout)
    specs = sharding.llama_tp_specs(params, cfg, mesh)
    qparams, compiled = sharding.quantize_sharded(params, recipe, mesh, specs,
                                                  return_compiled=True)
    o = qparams["params"]["layers_0"]["attn"]["o_proj"]["kernel"]
    print(f"o_proj {o.shape}: codes {o.qvalue.sharding.spec}, scales {o.scale.sharding.spec}, "
          f"one device holds codes {o.qvalue.addressable_shards[0].data.shape}")
    print("bytes per device:", sharding.device_bytes(qparams))
    print("compiled quantize, per device:", sharding.compiled_memory(compiled),
          "collectives:", sharding.collectives(compiled))

    # 2. tensor-parallel forward (shard_map, psum after o/down) against one device
    tokens = jax.random.randint(jax.random.key(1), (mesh.shape["data"] * 2, 16), 0, 512)
    qspecs = sharding.tree_specs(qparams, specs, mesh)
    tp_apply = sharding.make_tp_apply(model, mesh, qspecs, data_axis="data")
    with dispatch.settings(report=True) as rep:
        tp = jax.jit(lambda p, t: tp_apply(p, t)[0])(
            qparams, jax.device_put(tokens, NamedSharding(mesh, P("data"))))
    with jq.intercept():
        one = jax.jit(lambda p, t: model.apply(p, t)[0])(jax.device_put(qparams, devices[0]),
                                                         tokens)
    diff = float(np.abs(np.asarray(tp) - np.asarray(one)).max())
    print(f"tensor-parallel vs one device: max |diff| {diff:.2e} (logits up to "
          f"{float(jnp.abs(one).max()):.2f}); paths {sorted({r[2] for r in rep.rows})}")

    # 3. Orbax checkpoint restored straight onto the mesh
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint.save(f"{tmp}/ckpt", qparams, recipe)
        restored, _, _ = sharding.restore_on_mesh(f"{tmp}/ckpt", mesh, specs)
    r = restored["params"]["layers_0"]["attn"]["o_proj"]["kernel"]
    same = all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(qparams)))
    print(f"restored on the mesh: codes {r.qvalue.sharding.spec}, identical: {same}")


if __name__ == "__main__":
    main()
