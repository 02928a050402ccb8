"""Multi-device checks on simulated CPU devices, run in a subprocess by the tests of this folder:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharding/multidevice_checks.py CASE

prints one JSON object of measurements (the tests assert on it). CASE: quantize | forward |
calibration | checkpoint. The comparisons are against the same computation on one device.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import jaxquant as jq
from jaxquant import sharding as sh
from jaxquant.inference import dispatch
from jaxquant.models.llama import Llama, LlamaConfig

CFG = LlamaConfig(vocab_size=256, d_model=128, n_layers=2, n_heads=8, n_kv_heads=4, head_dim=16,
                  ffn_dim=256, tie_embeddings=False)
W4_G32 = jq.Recipe((jq.Rule(("re:kernel$",), jq.WeightScheme("int4", group_size=32,
                                                               scale_dtype="bfloat16")),),
                   name="w4a16-g32")


def mesh_2d(tp: int = 4) -> Mesh:
    return Mesh(np.array(jax.devices()[:8]).reshape(8 // tp, tp), ("data", "model"))


def tiny_model(cfg: LlamaConfig = CFG, seed: int = 0):
    model = Llama(cfg)
    params = model.init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))
    return model, params


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    ta = jax.tree.structure(a, is_leaf=jq.is_qarray)
    tb = jax.tree.structure(b, is_leaf=jq.is_qarray)
    return ta == tb and all(
        x.dtype == y.dtype and np.array_equal(np.atleast_1d(np.asarray(x)).view(np.uint8),
                                              np.atleast_1d(np.asarray(y)).view(np.uint8))
        for x, y in zip(la, lb))


def check_quantize() -> dict:
    model, params = tiny_model()
    out = {}
    recipes = {
        "w4a16-g32": W4_G32,
        "w8a8-int8": "w8a8-int8",
        "uint4-g32": jq.Recipe((jq.Rule(("re:kernel$",), jq.WeightScheme("uint4",
                                                                          group_size=32)),)),
        "nvfp4": "nvfp4",
        "nf4": "nf4",  # groups of 64: tensor parallelism over 2 devices keeps them whole
        "fp8": "fp8",
    }
    for name, recipe in recipes.items():
        mesh = mesh_2d(2 if name == "nf4" else 4)
        specs = sh.llama_tp_specs(params, CFG, mesh)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = jq.quantize(params, recipe)
            q, compiled = sh.quantize_sharded(params, recipe, mesh, specs, return_compiled=True)
        o_proj = q["params"]["layers_0"]["attn"]["o_proj"]["kernel"]
        q_proj = q["params"]["layers_0"]["attn"]["q_proj"]["kernel"]
        per_dev = sh.device_bytes(q)
        out[name] = {
            "bit_exact": leaves_equal(q, ref),
            "o_proj_qvalue_spec": str(o_proj.qvalue.sharding.spec),
            "o_proj_scale_spec": str(getattr(o_proj.scale, "qvalue", o_proj.scale).sharding.spec),
            "q_proj_qvalue_spec": str(q_proj.qvalue.sharding.spec),
            "q_proj_scale_spec": str(getattr(q_proj.scale, "qvalue", q_proj.scale).sharding.spec),
            "o_proj_shard_shape": list(o_proj.qvalue.addressable_shards[0].data.shape),
            "per_device_bytes": per_dev,
            "total_bytes": sh.total_bytes(q),
            "float_total_bytes": sh.total_bytes(params),
            "compiled": sh.compiled_memory(compiled),
            "collectives": sh.collectives(compiled),
        }
    return out


def _single(model, params, tokens, backend):
    with jq.intercept(backend=backend):
        return np.asarray(jax.jit(lambda p, t: model.apply(p, t)[0])(params, tokens), np.float32)


def _decode(step, params, tokens, cache) -> np.ndarray:
    """Logits of a 12-token prefill then 4 one-token steps through a KV cache, [B, 16, V]."""
    logits, cache = step(params, tokens[:, :12], cache)
    out = [np.asarray(logits, np.float32)]
    for t in range(12, 16):
        logits, cache = step(params, tokens[:, t: t + 1], cache)
        out.append(np.asarray(logits, np.float32))
    return np.concatenate(out, axis=1)


def _forward_case(cfg: LlamaConfig, recipe, backend: str, decode: bool) -> dict:
    mesh = mesh_2d()
    model, params = tiny_model(cfg)
    specs = sh.llama_tp_specs(params, cfg, mesh)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qparams = sh.quantize_sharded(params, recipe, mesh, specs)
    tokens = jax.random.randint(jax.random.key(1), (4, 16), 0, cfg.vocab_size, jnp.int32)
    single_params = jax.device_put(qparams, jax.devices()[0])
    ref = _single(model, single_params, tokens, backend)
    qspecs = sh.tree_specs(qparams, specs, mesh)
    tok = jax.device_put(tokens, NamedSharding(mesh, P("data")))
    tp_apply = sh.make_tp_apply(model, mesh, qspecs, data_axis="data")
    with dispatch.settings(backend=backend, report=True) as rep:
        out_sm = np.asarray(jax.jit(lambda p, t: tp_apply(p, t)[0])(qparams, tok), np.float32)
    # the same model under plain jit: GSPMD partitions it from the NamedShardings
    with jq.intercept(backend="xla"):
        out_jit = np.asarray(jax.jit(lambda p, t: model.apply(p, t)[0])(qparams, tok), np.float32)
    ref_xla = _single(model, single_params, tokens, "xla")
    result = {}
    if decode:  # KV-cache decode under shard_map against one device
        cache = sh.init_tp_cache(model, mesh, 4, 32, data_axis="data")
        with dispatch.settings(backend=backend):
            dec = _decode(jax.jit(tp_apply), qparams, tok, cache)
        with jq.intercept(backend=backend):
            ref_dec = _decode(jax.jit(model.apply), single_params, tokens, model.init_cache(4, 32))
        result = {"decode_max_abs_err": float(np.abs(dec - ref_dec).max()),
                  "decode_argmax_agree": float((dec.argmax(-1) == ref_dec.argmax(-1)).mean()),
                  "cache_k_spec": str(cache.k.sharding.spec)}
    scale = float(np.abs(ref).max())
    return {
        "shard_map_max_abs_err": float(np.abs(out_sm - ref).max()),
        "shard_map_bit_exact": bool(np.array_equal(out_sm, ref)),
        "jit_max_abs_err": float(np.abs(out_jit - ref_xla).max()),
        "argmax_agree": float((out_sm.argmax(-1) == ref.argmax(-1)).mean()),
        "logit_scale": scale,
        "paths": sorted({path for _, _, path in rep.rows}),
        "layers": len(rep.rows),
        **result,
    }


def check_forward() -> dict:
    w8 = _forward_case(CFG, "w8a8-int8", "auto", decode=True)
    bf16 = dataclasses.replace(CFG, dtype=jnp.bfloat16)
    w4 = _forward_case(bf16, W4_G32, "pallas", decode=False)
    return {"w8a8-int8": w8, "w4a16-g32-pallas": w4}


def main() -> None:
    case = sys.argv[1]
    fn = {"quantize": check_quantize, "forward": check_forward}[case]
    result = {"devices": len(jax.devices()), "jax": jax.__version__, **fn()}
    print("JSON:" + json.dumps(result))


if __name__ == "__main__":
    main()
