"""Damaged Orbax checkpoints: every corruption is a JaxquantError naming the tensor, raised from
the manifest/metadata before arrays are read."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import pytest

import jaxquant as jq
from jaxquant import checkpoint
from jaxquant.errors import JaxquantError

LEAF = "params/fc/kernel"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    w = {"params": {"fc": {"kernel": jax.random.normal(jax.random.key(0), (256, 64))},
                    "norm": {"scale": jnp.ones(64)}}}
    path = tmp_path_factory.mktemp("ck") / "good"
    checkpoint.save(path, jq.quantize(w, "w4a16-asym"), jq.get_preset("w4a16-asym"))
    return path


@pytest.fixture()
def copy(saved, tmp_path):
    dst = tmp_path / "c"
    shutil.copytree(saved, dst)
    return dst


def edit_manifest(path, fn):
    f = path / "jaxquant.json"
    info = json.loads(f.read_text())
    fn(info)
    f.write_text(json.dumps(info))


@pytest.mark.parametrize("edit, message", [
    (lambda i: i.update(format_version=2), "format version 2 is newer than this jaxquant "
                                           "supports \\(1\\); upgrade jaxquant"),
    (lambda i: i.update(format_version="1"), "format version '1' is newer"),
    (lambda i: i["tree"][LEAF]["fields"]["qvalue"].update(shape=[256, 64]),
     f"leaf {LEAF}: qvalue shape is \\(256, 64\\), its quantization metadata requires "
     "\\(128, 64\\)"),
    (lambda i: i["tree"][LEAF]["fields"]["qvalue"].update(dtype="int8"),
     f"leaf {LEAF}: qvalue dtype is int8, .* requires uint8"),
    (lambda i: i["tree"][LEAF]["fields"]["scale"].update(shape=[3, 64]),
     f"leaf {LEAF}: scale shape is \\(3, 64\\), .* requires \\(2, 64\\)"),
    (lambda i: i["tree"][LEAF]["fields"].pop("zero_point"),
     f"leaf {LEAF}: asymmetric format uint4 has no zero_point"),
    (lambda i: i["tree"][LEAF]["meta"].update(format="int5"),
     f"leaf {LEAF}: unknown format 'int5'"),
    (lambda i: i["tree"][LEAF]["meta"].pop("shape"),
     f"leaf {LEAF}: malformed quantization metadata"),
    (lambda i: i["tree"][LEAF]["fields"]["qvalue"].update(dtype="complex512"),
     f"leaf {LEAF}.qvalue: unknown dtype 'complex512'"),
    (lambda i: i["tree"]["params/norm/scale"].update(shape=[-1]),
     "leaf params/norm/scale: bad shape \\[-1\\]"),
    (lambda i: i["tree"]["params/norm/scale"].update(kind="pickle"),
     "leaf params/norm/scale: unknown kind 'pickle'"),
    (lambda i: i.pop("tree"), "corrupted manifest: no tree"),
])
def test_edited_manifest(copy, edit, message):
    edit_manifest(copy, edit)
    with pytest.raises(JaxquantError, match=message):
        checkpoint.restore(copy)


def test_manifest_disagreeing_with_stored_arrays(copy):
    # consistent with itself, but not with what Orbax stored
    def edit(i):
        i["tree"]["params/norm/scale"].update(shape=[32])

    edit_manifest(copy, edit)
    with pytest.raises(JaxquantError, match=r"tensor params/norm/scale is stored as "
                                            r"float32\[64\], the manifest says float32\[32\]"):
        checkpoint.open_checkpoint(copy)


def test_corrupted_or_missing_manifest(copy):
    (copy / "jaxquant.json").write_bytes(b'{"format_version": 1, "tree": {"par')
    with pytest.raises(JaxquantError, match="corrupted manifest"):
        checkpoint.restore(copy)
    (copy / "jaxquant.json").unlink()
    with pytest.raises(JaxquantError, match="is not a jaxquant checkpoint"):
        checkpoint.restore(copy)


def test_missing_arrays(copy):
    shutil.rmtree(copy / "arrays")
    with pytest.raises(JaxquantError, match="cannot read the array metadata in arrays/"):
        checkpoint.restore(copy)


def test_truncated_array_data(copy):
    data = [f for f in (copy / "arrays").rglob("*") if f.is_file() and f.stat().st_size > 4096]
    assert data, "expected Orbax data files"
    for f in data:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(JaxquantError, match="the checkpoint is damaged"):
        checkpoint.restore(copy)
