"""Sharding rules of QArray leaves, checked in-process on abstract meshes (no devices needed):
derived PartitionSpecs per format and granularity, clear errors for layouts that would split a
group, a packed byte or an axis, per-device metadata, and the Llama tensor-parallel layout."""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

import jaxquant as jq
from jaxquant.sharding import (ShardingError, check_tp_config, layer_kind, llama_tp_specs,
                               local_config, localize, qarray_spec, tree_specs)
from jaxquant.sharding.calibration import merge_samples
from jaxquant.tree_paths import flatten
from jaxquant.models.llama import Llama, LlamaConfig

MESH = AbstractMesh((2, 4), ("data", "model"))


def _quantize(shape, scheme, seed=0):
    x = jax.random.normal(jax.random.key(seed), shape, jnp.float32)
    return jq.quantize_array(x, scheme.resolve(shape, 0, "w"))


def test_groups_along_k_split_with_the_codes():
    q = _quantize((256, 64), jq.WeightScheme("int4", group_size=32))
    s = qarray_spec(q, P("model", None), MESH)
    # 256 rows / 4 = 64 per device: 32 packed bytes, 2 whole groups of 32
    assert s.qvalue == P("model", None) and s.scale == P("model", None)
    assert s.zero_point is None and s.input_smooth is None


def test_column_split_keeps_groups_whole():
    q = _quantize((96, 64), jq.WeightScheme("uint4", group_size=32))
    s = qarray_spec(q, P(None, "model"), MESH)
    assert s.qvalue == P(None, "model")
    assert s.scale == P(None, "model") and s.zero_point == P(None, "model")


def test_per_channel_scale_is_replicated_along_a_split_contraction_axis():
    q = _quantize((128, 64), jq.WeightScheme("int8", "channel"))
    s = qarray_spec(q, P("model", "data"), MESH)
    assert s.qvalue == P("model", "data")
    assert s.scale == P(None, "data")  # one scale per column: whole on every device of 'model'


def test_input_smooth_follows_the_contraction_axis():
    q = _quantize((128, 64), jq.WeightScheme("int8", "channel"))
    q = dataclasses.replace(q, input_smooth=jnp.ones((128,), jnp.float32),
                            input_scale=jnp.float32(0.5))
    s = qarray_spec(q, P("model", None), MESH)
    assert s.input_smooth == P("model") and s.input_scale == P()


def test_nested_scales():
    nv = _quantize((128, 64), jq.WeightScheme("nvfp4"))
    s = qarray_spec(nv, P("model", None), MESH)
    assert isinstance(s.scale, jq.QArray) and s.scale.qvalue == P("model", None)
    nf = _quantize((512, 64), jq.WeightScheme("nf4", double_quant=True))
    s = qarray_spec(nf, P("model", None), MESH)
    assert s.qvalue == P("model", None)
    # the double-quantized scales are stored flattened: replicated, never split wrongly
    assert all(x == P() for x in jax.tree.leaves(s.scale, is_leaf=lambda v: isinstance(v, P)))


@pytest.mark.parametrize("shape,scheme,spec,match", [
    ((256, 64), jq.WeightScheme("int4", group_size=128), P("model", None),
     r"axis 0 of size 256 split over 4 devices .* 64 elements per device, which splits the "
     r"quantization groups of 128.*divides 64 \(here: 16, 32, 64\)"),
    ((36, 64), jq.WeightScheme("int4", "channel"), P("model", None),
     r"packs two codes per byte along axis 0.* gives 9 per device, so one byte would straddle"),
    ((130, 64), jq.WeightScheme("int8", "channel"), P("model", None),
     r"axis 0 of size 130 does not split evenly over 4 devices"),
    ((128, 64), jq.WeightScheme("int8", "channel"), P("tensor", None),
     r"mesh axis 'tensor' is not in the mesh"),
    ((128, 64), jq.WeightScheme("int8", "channel"), P("model", None, None),
     r"3 entries for a 2-D parameter"),
    ((256, 64), jq.WeightScheme("int4", group_size=32), P(("data", "model"), None),
     r"gives 32 elements per device"),  # a tuple of mesh axes splits over 8 devices: fine
])
def test_bad_layouts_raise_clear_errors(shape, scheme, spec, match):
    q = _quantize(shape, scheme)
    if "32 elements per device" in match:
        assert qarray_spec(q, spec, MESH, "w").scale == spec
        return
    with pytest.raises(ShardingError, match=match) as info:
        qarray_spec(q, spec, MESH, "layers_0/o_proj/kernel")
    assert isinstance(info.value, jq.JaxquantError)
    if "mesh axis" not in match and "entries" not in match:
        assert "layers_0/o_proj/kernel" in str(info.value)


def test_ragged_groups_cannot_be_split():
    q = _quantize((576, 64), jq.WeightScheme("int4", group_size=128, ragged_groups=True))
    with pytest.raises(ShardingError, match="144 elements per device"):
        qarray_spec(q, P("model", None), MESH)
    assert qarray_spec(q, P(None, "model"), MESH).scale == P(None, "model")


@pytest.mark.parametrize("scheme", [jq.WeightScheme("int4", group_size=32),
                                    jq.WeightScheme("int8", "channel"),
                                    jq.WeightScheme("uint4", group_size=32),
                                    jq.WeightScheme("nvfp4")])
def test_localize_gives_the_block_of_one_device(scheme):
    """Slicing a QArray's fields by its derived spec and localizing equals quantizing nothing
    new: the local block dequantizes to the matching slice of the whole."""
    q = _quantize((128, 64), scheme, seed=3)
    s = qarray_spec(q, P("model", None), MESH)
    full = np.asarray(q.dequantize(jnp.float32))

    def take(x, spec, dev):
        if spec is None or x is None:
            return x
        idx = [slice(None)] * x.ndim
        for i, e in enumerate(tuple(spec) + (None,) * (x.ndim - len(spec))):
            if e == "model":
                n = x.shape[i] // 4
                idx[i] = slice(dev * n, (dev + 1) * n)
        return x[tuple(idx)]

    for dev in range(4):
        parts = jax.tree.map(lambda x, sp: take(x, sp, dev), q, s,
                             is_leaf=lambda v: isinstance(v, P) or v is None)
        local = localize(parts)
        assert local.shape == (32, 64)
        np.testing.assert_array_equal(np.asarray(local.dequantize(jnp.float32)),
                                      full[dev * 32:(dev + 1) * 32])


CFG = LlamaConfig(vocab_size=256, d_model=64, n_layers=1, n_heads=8, n_kv_heads=4, head_dim=8,
                  ffn_dim=128, tie_embeddings=False)


def test_llama_tensor_parallel_layout():
    params = jax.eval_shape(Llama(CFG).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    specs = dict(flatten(llama_tp_specs(params, CFG, MESH))[0])
    for name in ("q_proj", "k_proj", "v_proj"):
        assert specs[f"params/layers_0/attn/{name}/kernel"] == P(None, "model")
    for name in ("gate_proj", "up_proj"):
        assert specs[f"params/layers_0/mlp/{name}/kernel"] == P(None, "model")
    assert specs["params/layers_0/attn/o_proj/kernel"] == P("model", None)
    assert specs["params/layers_0/mlp/down_proj/kernel"] == P("model", None)
    assert specs["params/lm_head/kernel"] == P(None, "model")
    assert specs["params/embed/embedding"] == P()
    assert specs["params/layers_0/input_norm/scale"] == P()
    assert layer_kind("params/layers_3/attn/o_proj/kernel") == "row"
    assert layer_kind("params/final_norm/scale") is None
    local = local_config(CFG, 4)
    assert (local.n_heads, local.n_kv_heads, local.ffn_dim) == (2, 1, 32)
    # W4A16's groups of 128 cannot split o_proj's 256 inputs over 4 devices (64 each); with 64
    # inputs one ragged group spans the axis and its scale is replicated instead
    wide = dataclasses.replace(CFG, head_dim=32)
    params = jax.eval_shape(Llama(wide).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    q = jax.eval_shape(lambda p: jq.quantize(p, "w4a16"), params)
    with pytest.raises(ShardingError, match="o_proj/kernel: axis 0 of size 256 split over 4 "):
        tree_specs(q, llama_tp_specs(params, wide, MESH), MESH)


@pytest.mark.parametrize("change,match", [
    (dict(n_kv_heads=2), "n_kv_heads=2 is not a multiple of the model-axis size 4"),
    (dict(ffn_dim=130), "ffn_dim=130"),
    (dict(vocab_size=255), "vocab_size=255"),
    (dict(fused_projections=True), "fused_projections=False"),
])
def test_tp_config_errors(change, match):
    with pytest.raises(ShardingError, match=re.escape(match)):
        check_tp_config(dataclasses.replace(CFG, **change), 4)


def test_merge_samples_matches_numpy():
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(3, 5, 4)).astype(np.float32)
    for filled in ([5, 2, 4], [0, 0, 3], [1, 0, 0], [0, 0, 0]):
        want = np.concatenate([samples[d, :f] for d, f in enumerate(filled)])[:5]
        got, n = merge_samples(jnp.asarray(samples), jnp.asarray(filled, jnp.int32))
        assert int(n) == len(want)
        np.testing.assert_array_equal(np.asarray(got)[: len(want)], want)
        assert not np.asarray(got)[len(want):].any()


def test_calibration_batches_must_split_over_the_data_axis():
    from jaxquant.sharding import quantize_calibrated_dp

    model = Llama(CFG)
    params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    with pytest.raises(jq.JaxquantError, match=r"batches of \[3, 8\] windows do not split over "
                                               r"2 devices of mesh axis 'data'"):
        quantize_calibrated_dp(model, params, "w4a16-gptq", np.zeros((11, 8), np.int32), MESH,
                               batch_size=8)
