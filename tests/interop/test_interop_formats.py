"""Recognizing checkpoints on disk; saving and loading through every supported format."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import jaxquant as jq
from jaxquant.errors import JaxquantError
from jaxquant.interop import formats

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "interop"


@pytest.mark.parametrize("name, fmt", [("ct_int8_channel", "compressed-tensors"),
                                       ("gptq_int8_g32", "gptq"), ("awq_int4_g16", "awq")])
def test_detect(name, fmt):
    assert formats.detect(FIXTURES / name) == fmt


def test_detect_rejects_other_files(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(JaxquantError, match="is a file but not GGUF"):
        formats.detect(tmp_path / "x.bin")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_text("{not json")
    with pytest.raises(JaxquantError, match="corrupted JSON"):
        formats.detect(tmp_path / "d")


@pytest.mark.parametrize("fmt", formats.SAVE_FORMATS)
def test_save_then_load(tmp_path, fmt):
    tree = {"params": {"fc": {"kernel": jnp.asarray(np.random.default_rng(0).standard_normal(
        (128, 32)), jnp.float32)}, "norm": {"scale": jnp.ones(32)}}}
    recipe = jq.get_preset("w8a16")
    q = jq.quantize(tree, recipe)
    formats.save(tmp_path / "c", q, recipe, format=fmt, base_model="tiny")
    assert formats.detect(tmp_path / "c") == ("orbax" if fmt == "orbax" else fmt)
    params, got_recipe, base = formats.load(tmp_path / "c")
    assert base == "tiny" and got_recipe == recipe
    a, b = q["params"]["fc"]["kernel"], params["params"]["fc"]["kernel"]
    np.testing.assert_array_equal(np.asarray(a.qvalue), np.asarray(b.qvalue))
    np.testing.assert_array_equal(np.asarray(a.scale), np.asarray(b.scale))
    with pytest.raises(JaxquantError, match="format 'pickle' is not one jaxquant saves"):
        formats.save(tmp_path / "p", q, recipe, format="pickle")


def test_load_foreign_checkpoint_describes_its_scheme():
    params, recipe, base = formats.load(FIXTURES / "gptq_int4_g16")
    assert base is None and recipe.name == "gptq-import"
    w = recipe.rules[0].weight
    assert (w.format, w.group_size) == ("uint4", 16)
