"""`jaxquant inspect`, `quantize --format compressed-tensors` and `eval --model DIR` on
imported checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import pytest

import jaxquant as jq
from jaxquant import checkpoint
from jaxquant.cli import main

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "interop"
SMALL = ["--max-tokens", "256", "--seq-len", "128", "--batch-size", "2"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())  # rich wraps long error lines


@pytest.mark.parametrize("name, fmt, scheme", [
    ("ct_int4_asym_g16", "compressed-tensors", "int4 asym group g16 (pack-quantized)"),
    ("ct_fp8_channel", "compressed-tensors", "float8 sym channel"),
    ("gptq_int4_g16_actorder", "gptq", "gptq int4 g16 act-order"),
    ("awq_int4_g16", "awq", "awq int4 g16"),
])
def test_inspect_safetensors_dirs(capsys, name, fmt, scheme):
    code, out, _ = run(capsys, "inspect", str(FIXTURES / name), "--json")
    assert code == 0
    r = json.loads(out)
    assert r["format"] == fmt and r["quantized_leaves"] == 2
    leaves = {leaf["name"]: leaf for leaf in r["leaves"]}
    q = leaves["model.layers.0.self_attn.q_proj"]
    assert q["quantized"] and q["scheme"].startswith(scheme) and q["bytes"] > 0
    code, out, _ = run(capsys, "inspect", str(FIXTURES / name))
    assert code == 0 and "model.layers.0.self_attn.q_proj" in out


def test_inspect_orbax_and_gguf(capsys, tmp_path):
    import gguf
    import numpy as np

    w = {"params": {"fc": {"kernel": jnp.ones((256, 64))}, "norm": {"scale": jnp.ones(64)}}}
    checkpoint.save(tmp_path / "o", jq.quantize(w, "w4a16"), jq.get_preset("w4a16"))
    code, out, _ = run(capsys, "inspect", str(tmp_path / "o"), "--json")
    r = json.loads(out)
    assert code == 0 and r["format"] == "orbax" and r["recipe"]["name"] == "w4a16"
    kernel = next(leaf for leaf in r["leaves"] if leaf["name"] == "params/fc/kernel")
    assert kernel["scheme"] == "int4_full group block (128, 1)"
    assert kernel["bytes"] == 256 * 64 // 2 + 2 * 64 * 2  # nibbles + bf16 scales

    writer = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    x = np.ones((4, 64), np.float32)
    writer.add_tensor("a", gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0),
                      raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("b", x)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    code, out, _ = run(capsys, "inspect", str(tmp_path / "m.gguf"), "--json")
    r = json.loads(out)
    assert code == 0 and r["format"] == "gguf" and r["quantized_leaves"] == 1
    assert r["leaves"][0]["scheme"] == "Q8_0 (exact QArray)"


def test_inspect_unknown_path(capsys, tmp_path):
    code, _, err = run(capsys, "inspect", str(tmp_path))
    assert code == 2 and "not a checkpoint jaxquant recognizes" in err
    code, _, err = run(capsys, "inspect", str(tmp_path / "nope"))
    assert code == 2 and "does not exist" in err


def test_eval_imported_without_base_model(capsys):
    code, _, err = run(capsys, "eval", "--model", str(FIXTURES / "gptq_int4_g16"), *SMALL)
    assert code == 2 and "does not name its base model" in err


def test_eval_imported_tree_not_matching_the_model(capsys, tmp_path):
    path = tmp_path / "ct"
    shutil.copytree(FIXTURES / "ct_int4_sym_g16", path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["jaxquant"] = {"base_model": "smollm2-135m"}
    (path / "config.json").write_text(json.dumps(cfg))
    code, _, err = run(capsys, "eval", "--model", str(path), *SMALL)
    assert code == 2 and "does not match the model: tensor" in err


def test_quantize_to_compressed_tensors_then_eval_and_inspect(capsys, tmp_path):
    out = tmp_path / "w8"
    code, _, _ = run(capsys, "quantize", "--recipe", "w8a16", "--format", "compressed-tensors",
                     "--out", str(out), "--no-eval", "--json")
    assert code == 0
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    code, res, _ = run(capsys, "eval", "--model", str(out), "--json", *SMALL)
    ev = json.loads(res)
    assert code == 0 and ev["recipe"] == "w8a16"
    assert abs(ev["perplexity_delta_percent"]) < 1.0  # int8 per channel: as close as Orbax's
    code, res, _ = run(capsys, "inspect", str(out), "--json")
    r = json.loads(res)
    assert r["format"] == "compressed-tensors" and r["quantized_leaves"] == 30 * 7
    assert r["base_model"] == "smollm2-135m" and r["recipe"]["name"] == "w8a16"
