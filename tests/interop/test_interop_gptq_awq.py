"""GPTQ (v1/v2, act-order) and AWQ fixtures laid out as the real libraries pack them
(tests/fixtures/make_interop_fixtures.py): imports equal the float64 reference weights exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from jaxquant.errors import JaxquantError
from jaxquant.interop import gptq_awq
from jaxquant.interop.safetensors_io import SafetensorsFile, write

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "interop"
Q = "model.layers.0.self_attn.q_proj"


@pytest.mark.parametrize("name, fmt, method", [
    ("gptq_int4_g16", "uint4", "gptq"), ("gptq_int4_g16_actorder", "uint4", "gptq"),
    ("gptq_int8_g32", "uint8", "gptq"), ("awq_int4_g16", "uint4", "awq"),
])
def test_import_equals_reference(name, fmt, method):
    imported = gptq_awq.import_dir(FIXTURES / name)
    assert imported.format == method
    ref = SafetensorsFile(FIXTURES / name / "reference.safetensors")
    x = ref.read("x").astype(np.float64)
    for layer, lin in imported.layers.items():
        assert lin.weight.meta.format == fmt
        w_ref = ref.read(f"{layer}.weight").T  # [in, out] float64
        np.testing.assert_array_equal(lin.dequantize(np.float32).astype(np.float64), w_ref)
        xs = x[:, : w_ref.shape[0]]
        if lin.input_perm is not None:  # act-order: permuted rows, permuted inputs
            w_perm = np.asarray(lin.weight.dequantize(np.float32), np.float64)
            np.testing.assert_allclose(xs[:, lin.input_perm] @ w_perm, xs @ w_ref, atol=1e-12)


def test_act_order_groups_become_contiguous_and_to_params_dequantizes():
    imported = gptq_awq.import_dir(FIXTURES / "gptq_int4_g16_actorder")
    lin = imported.layers[Q]
    g_idx = SafetensorsFile(FIXTURES / "gptq_int4_g16_actorder" / "model.safetensors").read(
        f"{Q}.g_idx")
    assert not np.array_equal(g_idx, np.arange(64) // 16)
    np.testing.assert_array_equal(g_idx[lin.input_perm], np.arange(64) // 16)
    params = imported.to_params()
    kernel = params["params"]["layers_0"]["attn"]["q_proj"]["kernel"]
    assert isinstance(kernel, np.ndarray)  # a Dense cannot permute its input
    plain = gptq_awq.import_dir(FIXTURES / "gptq_int4_g16").to_params()
    assert plain["params"]["layers_0"]["attn"]["q_proj"]["kernel"].meta.format == "uint4"


def copy_with(tmp_path, name, tensors=None, config=None) -> Path:
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    if tensors:
        f = SafetensorsFile(dst / "model.safetensors")
        t = {n: f.read(n) for n in f.names()}
        tensors(t)
        write(dst / "model.safetensors", t)
    if config:
        for fname in ("quantize_config.json", "config.json"):
            p = dst / fname
            if p.is_file():
                cfg = json.loads(p.read_text())
                config(cfg.get("quantization_config", cfg))
                p.write_text(json.dumps(cfg))
    return dst


def test_gptq_v2_stores_zero_without_the_offset(tmp_path):
    v1 = gptq_awq.import_dir(FIXTURES / "gptq_int4_g16").layers[Q]
    path = copy_with(tmp_path, "gptq_int4_g16", config=lambda c: c.update(
        checkpoint_format="gptq_v2"))
    v2 = gptq_awq.import_dir(path).layers[Q]
    np.testing.assert_array_equal(np.asarray(v2.weight.zero_point) + 1,
                                  np.asarray(v1.weight.zero_point))


@pytest.mark.parametrize("name, tensors, config, message", [
    ("gptq_int4_g16", lambda t: t.update({f"{Q}.qzeros": t[f"{Q}.qzeros"][:, :2]}), None,
     rf"tensor '{Q}.qzeros' is int32\[4, 2\], expected int32\[4, 4\]"),
    ("gptq_int4_g16", lambda t: t.update({f"{Q}.scales": t[f"{Q}.scales"].astype(np.float32)}),
     None, rf"tensor '{Q}.scales' is float32\[4, 32\], expected float16\[4, 32\]"),
    ("gptq_int4_g16", lambda t: t.update({f"{Q}.g_idx": t[f"{Q}.g_idx"] + 3}), None,
     rf"tensor '{Q}.g_idx' has group indices outside \[0, 4\)"),
    ("gptq_int4_g16", lambda t: t.update({f"{Q}.g_idx": np.zeros(64, np.int32)}), None,
     rf"tensor '{Q}.g_idx' does not give every group 16 rows"),
    ("gptq_int4_g16", lambda t: t.pop(f"{Q}.scales"), None, rf"tensor '{Q}.scales' is missing"),
    ("gptq_int4_g16", None, lambda c: c.update(bits=3), "3-bit GPTQ is not supported"),
    ("gptq_int4_g16", None, lambda c: c.update(group_size=24),
     "do not fit group 24"),
    ("awq_int4_g16", lambda t: t.update({f"{Q}.qweight": t[f"{Q}.qweight"][:, :3]}), None,
     r"out_features 32 do not fit|expected int32\[64, 4\]"),
    ("awq_int4_g16", None, lambda c: c.update(version="gemv"), "AWQ version 'gemv' is not "
                                                               "supported"),
    ("awq_int4_g16", None, lambda c: c.update(quant_method="bnb"), "neither gptq nor awq"),
])
def test_damaged(tmp_path, name, tensors, config, message):
    path = copy_with(tmp_path, name, tensors, config)
    with pytest.raises(JaxquantError, match=message):
        gptq_awq.import_dir(path)
