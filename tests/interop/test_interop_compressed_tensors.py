"""compressed-tensors: checkpoints written by the real library (fixtures) import to its own
dequantization exactly and re-export byte-identically; jaxquant trees export and import back to
identical arrays; malformed checkpoints give errors naming the tensor."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxquant as jq
from jaxquant.errors import JaxquantError
from jaxquant.interop import compressed_tensors as ct
from jaxquant.interop.safetensors_io import SafetensorsFile, write

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "interop"
CT = ["ct_int4_sym_g16", "ct_int4_asym_g16", "ct_int8_channel", "ct_fp8_channel"]
FORMATS = {"ct_int4_sym_g16": "int4", "ct_int4_asym_g16": "uint4", "ct_int8_channel": "int8",
           "ct_fp8_channel": "fp8_e4m3"}


@pytest.mark.parametrize("name", CT)
def test_library_checkpoint_imports_to_its_own_dequantization(name):
    imported = ct.import_dir(FIXTURES / name)
    ref = SafetensorsFile(FIXTURES / name / "reference.safetensors")
    x = ref.read("x").astype(np.float64)
    assert set(imported.layers) == {"model.layers.0.self_attn.q_proj",
                                    "model.layers.0.mlp.down_proj"}
    for layer, lin in imported.layers.items():
        assert lin.weight.meta.format == FORMATS[name]
        w_lib = ref.read(f"{layer}.weight")  # float64 of the library's dequantized [out, in]
        w = lin.dequantize().astype(np.float64)  # in the library's dtype (bf16 / f32)
        np.testing.assert_array_equal(w, w_lib.T)
        xs = x[:, : w.shape[0]]
        np.testing.assert_allclose(xs @ w, xs @ w_lib.T, rtol=0, atol=1e-12)
        # the library's own torch matmul (bf16 models compute in bf16)
        tol = 2e-2 if lin.weight.meta.dtype == "bfloat16" else 1e-5
        np.testing.assert_allclose(xs @ w, ref.read(f"{layer}.y"), rtol=tol, atol=tol)


def test_quantized_dense_matches_library_matmul():
    """A Flax Dense with the imported QArray kernel, run through jq.intercept()."""
    imported = ct.import_dir(FIXTURES / "ct_int4_asym_g16")
    ref = SafetensorsFile(FIXTURES / "ct_int4_asym_g16" / "reference.safetensors")
    layer = "model.layers.0.self_attn.q_proj"
    kernel = imported.layers[layer].weight
    x = ref.read("x")[:, :64]
    with jq.intercept():
        y = nn.Dense(32, use_bias=False).apply({"params": {"kernel": kernel}}, jnp.asarray(x))
    want = x.astype(np.float64) @ ref.read(f"{layer}.weight").T
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", CT)
def test_reexport_is_byte_identical_to_the_library(tmp_path, name):
    imported = ct.import_dir(FIXTURES / name)
    ct.export_dir(tmp_path / "out", imported.to_params())
    lib = SafetensorsFile(FIXTURES / name / "model.safetensors")
    ours = SafetensorsFile(tmp_path / "out" / "model.safetensors")
    assert sorted(lib.names()) == sorted(ours.names())
    for n in lib.names():
        assert lib.entries[n] == ours.entries[n], n
        np.testing.assert_array_equal(lib.read(n).view(np.uint8), ours.read(n).view(np.uint8))
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    lib_cfg = json.loads((FIXTURES / name / "config.json").read_text())["quantization_config"]
    ours_w = next(iter(cfg["config_groups"].values()))["weights"]
    lib_w = next(iter(lib_cfg["config_groups"].values()))["weights"]
    for key in ("num_bits", "type", "symmetric", "strategy", "group_size"):
        assert ours_w[key] == lib_w[key], key


def schemes():
    return {
        "int4-g32": jq.Recipe((jq.Rule(("kernel",), jq.WeightScheme("int4", group_size=32,
                                                                  scale_dtype="bfloat16")),)),
        "uint4-g32": jq.Recipe((jq.Rule(("kernel",), jq.WeightScheme("uint4", group_size=32)),)),
        "int8-channel": jq.get_preset("w8a16"),
        "uint8-g64": jq.Recipe((jq.Rule(("kernel",), jq.WeightScheme("uint8", group_size=64)),)),
        "int2-g32": jq.Recipe((jq.Rule(("kernel",), jq.WeightScheme("int2", group_size=32)),)),
        "fp8-channel": jq.get_preset("fp8"),
        "fp8-tensor": jq.Recipe((jq.Rule(("kernel",), jq.WeightScheme(
            "fp8_e4m3", granularity="tensor")),)),
    }


def tiny_tree(key=0):
    k = jax.random.split(jax.random.key(key), 3)
    kernel = jax.random.normal(k[0], (128, 64)).at[:32, 0].set(0.0).at[3, 5].set(25.0)
    return {"params": {"layers_0": {"attn": {"q_proj": {"kernel": kernel}},
                                    "mlp": {"down_proj": {"kernel": jax.random.normal(k[1],
                                                                                      (64, 96))}},
                                    "input_norm": {"scale": jnp.ones(128)}},
                       "embed": {"embedding": jax.random.normal(k[2], (50, 128))}}}


@pytest.mark.parametrize("scheme", sorted(schemes()))
def test_export_then_import_returns_identical_arrays(tmp_path, scheme):
    recipe = schemes()[scheme]
    q = jq.quantize(tiny_tree(), recipe)
    ct.export_dir(tmp_path / "out", q, recipe=recipe, base_model="tiny")
    back = ct.import_dir(tmp_path / "out")
    assert back.extra["base_model"] == "tiny"
    params = back.to_params()
    names = SafetensorsFile(tmp_path / "out" / "model.safetensors").names()
    assert "model.layers.0.self_attn.q_proj.weight_scale" in names  # HF Llama names
    a = jax.tree_util.tree_leaves_with_path(q, is_leaf=jq.is_qarray)
    b = dict(jax.tree_util.tree_leaves_with_path(params, is_leaf=jq.is_qarray))
    for path, leaf in a:
        got = b[path]
        if isinstance(leaf, jq.QArray):
            # granularity is a display name: a group spanning the whole axis reads "channel"
            assert dataclasses.replace(got.meta, granularity=leaf.meta.granularity) == leaf.meta
            for field in ("qvalue", "scale", "zero_point"):
                x, y = getattr(leaf, field), getattr(got, field)
                assert (x is None) == (y is None), field
                if x is not None:
                    assert x.dtype == y.dtype and x.shape == y.shape, field
                    np.testing.assert_array_equal(np.asarray(x).view(np.uint8),
                                                  np.asarray(y).view(np.uint8))
        else:
            np.testing.assert_array_equal(np.asarray(leaf), np.asarray(got))


def test_export_errors_name_the_tensor(tmp_path):
    w = {"params": {"fc": {"kernel": jnp.ones((200, 16))}}}
    with pytest.raises(JaxquantError, match=r"params/fc/kernel: block \(128, 1\) .*groups must "
                                            r"divide in_features=200: e.g. group sizes \[8\]"):
        ct.export_dir(tmp_path / "a", jq.quantize(w, "w4a16"))
    with pytest.raises(JaxquantError, match="params/fc/kernel: only 2-D kernels .* plain scales"):
        ct.export_dir(tmp_path / "b", jq.quantize(w, "nf4"))
    w = {"params": {"fc": {"kernel": jnp.ones((64, 16))}}}
    with pytest.raises(JaxquantError, match="format mxfp4 has no compressed-tensors"):
        ct.export_dir(tmp_path / "c", jq.quantize(w, "mxfp4"))
    assert not any(tmp_path.iterdir())  # nothing half-written


def damaged_copy(tmp_path, name, fn_tensors=None, fn_config=None) -> Path:
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    if fn_tensors:
        f = SafetensorsFile(dst / "model.safetensors")
        tensors = {n: f.read(n) for n in f.names()}
        fn_tensors(tensors)
        write(dst / "model.safetensors", tensors)
    if fn_config:
        cfg = json.loads((dst / "config.json").read_text())
        fn_config(cfg["quantization_config"])
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


Q = "model.layers.0.self_attn.q_proj"


@pytest.mark.parametrize("name, tensors, config, message", [
    ("ct_int4_asym_g16", lambda t: t.update({f"{Q}.weight_shape": np.array([32, 72])}), None,
     rf"tensor '{Q}.weight_packed' has shape \[32, 8\], expected \[32, 9\]"),
    ("ct_int4_asym_g16", lambda t: t.update({f"{Q}.weight_packed": t[f"{Q}.weight_packed"]
                                             .astype(np.int64)}), None,
     rf"tensor '{Q}.weight_packed' has dtype int64, expected int32"),
    ("ct_int4_asym_g16", lambda t: t.update({f"{Q}.weight_scale": t[f"{Q}.weight_scale"][:, :3]}),
     None, rf"tensor '{Q}.weight_scale' has shape \[32, 3\], expected \[32, 4\]"),
    ("ct_int4_asym_g16", lambda t: t.pop(f"{Q}.weight_zero_point"), None,
     rf"tensor '{Q}.weight_zero_point' is missing"),
    ("ct_int4_asym_g16", lambda t: t.update({f"{Q}.weight_shape": np.array([32, 64, 1])}), None,
     rf"tensor '{Q}.weight_shape' has shape \[3\], expected \[2\]"),
    ("ct_int4_sym_g16", None, lambda c: c["config_groups"]["group_0"]["weights"].update(
        group_size=24), "down_proj: group_size 24 does not divide in_features 32"),
    ("ct_int4_sym_g16", None, lambda c: c["config_groups"]["group_0"]["weights"].update(
        num_bits=5), "down_proj: int weights of 5 bits are not supported"),
    ("ct_int4_sym_g16", None, lambda c: c.update(quantization_status="frozen"),
     "quantization_status is 'frozen'"),
    ("ct_fp8_channel", lambda t: t.update({f"{Q}.weight": t[f"{Q}.weight"].view(np.int8)}), None,
     rf"tensor '{Q}.weight' has dtype int8, expected float8_e4m3fn"),
])
def test_damaged_checkpoints(tmp_path, name, tensors, config, message):
    path = damaged_copy(tmp_path, name, tensors, config)
    with pytest.raises(JaxquantError, match=message):
        ct.import_dir(path)


def test_truncated_weights_file(tmp_path):
    path = damaged_copy(tmp_path, "ct_int8_channel")
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(JaxquantError, match="is truncated"):
        ct.import_dir(path)
