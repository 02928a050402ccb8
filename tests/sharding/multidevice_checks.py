"""Multi-device checks on simulated CPU devices, run in a subprocess by the tests of this folder:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \
        python tests/sharding/multidevice_checks.py CASE

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
            step1 = jax.jit(lambda p, t, c: model.apply(p, t, cache=c))
            ref_dec = _decode(step1, single_params, tokens, model.init_cache(4, 32))
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


def _calibration_model():
    cfg = dataclasses.replace(CFG, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=32, ffn_dim=128)
    model, params = tiny_model(cfg)
    emb = params["params"]["embed"]["embedding"]  # an outlier channel, as trained LLMs have
    params["params"]["embed"]["embedding"] = emb.at[:, 7].multiply(25.0)
    tokens = np.asarray(jax.random.randint(jax.random.key(2), (16, 16), 0, cfg.vocab_size))
    return model, params, tokens


def _reduction_exact(mesh) -> dict:
    """Two batches of rows [256, 64] (an outlier channel) streamed into LayerStats on one device,
    against per-device statistics of the same rows (32 per device) reduced over the mesh and
    merged batch by batch: the reduction itself, independent of any forward pass."""
    from jaxquant.methods.capture import LayerStats, update_stats
    from jaxquant.sharding.calibration import merge_stats, reduce_layer_stats

    xs = [np.asarray(jax.random.normal(jax.random.key(i), (256, 64))) * np.where(
        np.arange(64) == 5, 30.0, 1.0).astype(np.float32) for i in (3, 4)]
    init = lambda: LayerStats.init(64, hessian=True, sample_rows=300)  # noqa: E731
    ref = init()
    for x in xs:
        ref = update_stats(ref, jnp.asarray(x))
    local = jax.jit(jax.shard_map(lambda x: reduce_layer_stats(update_stats(init(), x), "data"),
                                  mesh=mesh, in_specs=P("data"), out_specs=P(),
                                  check_vma=False))
    got = None
    for x in xs:
        st = local(jax.device_put(x, NamedSharding(mesh, P("data"))))
        got = st if got is None else merge_stats(got, st)
    return {
        "hessian_max_rel_err": float(jnp.abs(got.hessian - ref.hessian).max()
                                     / jnp.abs(ref.hessian).max()),
        "absmax_exact": bool((got.absmax == ref.absmax).all()),
        "abssum_max_rel_err": float(jnp.abs(got.abssum - ref.abssum).max()
                                    / jnp.abs(ref.abssum).max()),
        "count": [int(got.count), int(ref.count)],
        "filled": [int(got.filled), int(ref.filled)],
        "samples_exact": bool((got.sample == ref.sample).all()),
    }


def _codes_agree(a, b) -> tuple[float, int]:
    """(fraction of identical codes over all QArrays, largest difference in grid steps)."""
    same = total = steps = 0
    for x, y in zip(jax.tree.leaves(a, is_leaf=jq.is_qarray),
                    jax.tree.leaves(b, is_leaf=jq.is_qarray)):
        if isinstance(x, jq.QArray):
            cx, cy = np.asarray(x.codes()), np.asarray(y.codes())
            same += int((cx == cy).sum())
            total += cx.size
            fmt = jq.get_format(x.format)
            vx = np.asarray(fmt.codec.decode(x.codes()), np.float32)
            vy = np.asarray(fmt.codec.decode(y.codes()), np.float32)
            steps = max(steps, int(np.abs(vx - vy).max()))
    return same / max(total, 1), steps


def check_calibration() -> dict:
    from jaxquant.methods.sequential import quantize_calibrated

    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    model, params, tokens = _calibration_model()
    out = {"reduction": _reduction_exact(mesh)}
    sq = jq.get_preset("w8a8-smoothquant").rules[0]
    # the preset calibrates on float inputs (the next block's inputs come from the sharded
    # statistics pass itself); sequential: true passes through each quantized block instead
    stepwise = jq.Recipe((dataclasses.replace(sq, method_args={"sequential": True}),))
    recipes = {"w4a16-gptq": "w4a16-gptq", "w4a16-awq": "w4a16-awq",
               "w8a8-smoothquant": "w8a8-smoothquant", "w8a8-smoothquant-sequential": stepwise}
    for name, recipe in recipes.items():
        ref, _ = quantize_calibrated(model, params, recipe, tokens, progress=False)
        got, report = sh.quantize_calibrated_dp(model, params, recipe, tokens, mesh)
        agree, steps = _codes_agree(got, ref)
        out[name] = {"codes_identical_fraction": agree, "codes_max_step_difference": steps,
                       "bit_exact": leaves_equal(got, ref), "tokens": report.tokens}
    # the data-parallel pipeline on a 1-device mesh is the single-device computation exactly
    one_mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    ref, _ = quantize_calibrated(model, params, "w4a16-gptq", tokens, progress=False)
    got, _ = sh.quantize_calibrated_dp(model, params, "w4a16-gptq", tokens, one_mesh)
    out["one_device_mesh_bit_exact"] = leaves_equal(got, ref)
    return out


def check_checkpoint() -> dict:
    from jaxquant.checkpoint import save

    mesh = mesh_2d()
    model, params = tiny_model()
    specs = sh.llama_tp_specs(params, CFG, mesh)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qparams = jq.quantize(params, W4_G32)
    with tempfile.TemporaryDirectory() as tmp:
        save(tmp + "/ckpt", qparams, W4_G32)
        restored, recipe, _ = sh.restore_on_mesh(tmp + "/ckpt", mesh, specs)
    o_proj = restored["params"]["layers_0"]["attn"]["o_proj"]["kernel"]
    want = sh.named_shardings(sh.tree_specs(qparams, specs, mesh), mesh)
    shardings_ok = all(
        a.sharding.is_equivalent_to(b, a.ndim)
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(want)))
    try:
        sh.restore_on_mesh(tmp + "/missing", mesh, specs)
        missing_error = ""
    except jq.JaxquantError as e:
        missing_error = type(e).__name__
    return {
        "bit_exact": leaves_equal(restored, qparams),
        "shardings_as_derived": shardings_ok,
        "o_proj_qvalue_spec": str(o_proj.qvalue.sharding.spec),
        "o_proj_shard_shape": list(o_proj.qvalue.addressable_shards[0].data.shape),
        "per_device_bytes": sh.device_bytes(restored),
        "recipe": recipe.name if recipe else None,
        "missing_error": missing_error,
    }


def main() -> None:
    case = sys.argv[1]
    fn = {"quantize": check_quantize, "forward": check_forward,
          "calibration": check_calibration, "checkpoint": check_checkpoint}[case]
    result = {"devices": len(jax.devices()), "jax": jax.__version__, **fn()}
    print("JSON:" + json.dumps(result))


if __name__ == "__main__":
    main()
