"""Orbax save/restore: bit-exact round trips of every format, storage dtypes on disk, recipe and
versions, shardings (one, per leaf, callable), lazy per-leaf reads, abstract trees, tree checks,
atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxquant as jq
from jaxquant import checkpoint
from jaxquant.errors import JaxquantError

PRESETS = ["w8a16", "w4a16", "w4a16-asym", "nf4", "fp8", "nvfp4", "mxfp4"]


class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(96, name="fc1")(x)
        return nn.Dense(40, name="fc2")(nn.relu(h)) + nn.LayerNorm(name="norm")(x[..., :40])


@pytest.fixture(scope="module")
def params():
    # 200 inputs: not a multiple of 128 (ragged groups), an all-zero group, an outlier
    p = Tiny().init(jax.random.key(0), jnp.ones((2, 200)))
    k = p["params"]["fc1"]["kernel"]
    k = k.at[:64, 0].set(0.0).at[5, 3].set(40.0)
    return jax.tree.map(lambda x: x, {"params": {**p["params"], "fc1": {**p["params"]["fc1"],
                                                                       "kernel": k}}})


def leaves(tree):
    return jax.tree_util.tree_leaves_with_path(tree)


def assert_identical(a, b):
    la, lb = leaves(a), leaves(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb):
        assert x.dtype == y.dtype and x.shape == y.shape, path
        np.testing.assert_array_equal(np.atleast_1d(np.asarray(x)).view(np.uint8),
                                      np.atleast_1d(np.asarray(y)).view(np.uint8))


@pytest.mark.parametrize("preset", PRESETS)
def test_round_trip_is_bit_exact_and_keeps_storage_dtypes(tmp_path, params, preset):
    q = jq.quantize(params, preset)
    checkpoint.save(tmp_path / "c", q, jq.get_preset(preset))
    restored, recipe, info = checkpoint.restore(tmp_path / "c")
    assert_identical(q, restored)
    assert jax.tree.structure(q) == jax.tree.structure(restored)
    assert recipe == jq.get_preset(preset)
    assert info["format_version"] == 1 and info["library_version"] == jq.__version__
    kernel = restored["params"]["fc1"]["kernel"]
    assert kernel.meta == q["params"]["fc1"]["kernel"].meta
    stored = checkpoint.abstract(tmp_path / "c")["params"]["fc1"]["kernel"]
    assert stored.qvalue.dtype == q["params"]["fc1"]["kernel"].qvalue.dtype  # uint8 / int8 / fp8


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_four_bit_checkpoint_is_about_a_quarter_of_bf16(tmp_path):
    w = {"params": {f"l{i}": {"kernel": jax.random.normal(jax.random.key(i), (1024, 1024))}
                    for i in range(2)}}
    checkpoint.save(tmp_path / "bf16", jax.tree.map(lambda x: x.astype(jnp.bfloat16), w))
    checkpoint.save(tmp_path / "w4", jq.quantize(w, "w4a16"))
    ratio = dir_bytes(tmp_path / "w4") / dir_bytes(tmp_path / "bf16")
    assert 0.2 < ratio < 0.32, ratio  # 4 bits + a bf16 scale per 128 = 4.125 / 16 = 0.258


def test_restore_onto_one_sharding_and_per_leaf_shardings(tmp_path, params):
    q = jq.quantize(params, "w4a16-asym")
    checkpoint.save(tmp_path / "c", q)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("x",))
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x", None))

    tree, _, _ = checkpoint.restore(tmp_path / "c", sharding=rep)
    assert all(x.sharding == rep for _, x in leaves(tree))

    # a pytree of shardings: a QArray of shardings for one leaf, one Sharding for another
    per_leaf = {"params": {"fc1": {"kernel": jax.tree.map(lambda _: rows, q["params"]["fc1"]
                                                          ["kernel"])},
                           "fc2": {"kernel": rep}}}
    tree, _, _ = checkpoint.restore(tmp_path / "c", sharding=per_leaf)
    k1, k2 = tree["params"]["fc1"]["kernel"], tree["params"]["fc2"]["kernel"]
    assert k1.qvalue.sharding == rows and k1.scale.sharding == rows
    assert k2.qvalue.sharding == rep and k2.zero_point.sharding == rep
    assert_identical(q, tree)

    seen = []

    def by_path(path, field, struct):
        seen.append((path, field, struct.shape))
        return rows if field == "qvalue" else None  # None: default device

    tree, _, _ = checkpoint.restore(tmp_path / "c", sharding=by_path)
    assert ("params/fc1/kernel", "qvalue", (100, 96)) in seen
    assert ("params/norm/scale", "", (40,)) in seen
    assert tree["params"]["fc1"]["kernel"].qvalue.sharding == rows
    assert_identical(q, tree)


def test_bad_sharding_is_an_error_naming_the_leaf(tmp_path, params):
    checkpoint.save(tmp_path / "c", jq.quantize(params, "w8a16"))
    with pytest.raises(JaxquantError, match="sharding for params/fc1/kernel.qvalue: expected a "
                                            "jax.sharding.Sharding, got str"):
        checkpoint.restore(tmp_path / "c", sharding=lambda p, f, s: "cpu" if f else None)
    with pytest.raises(JaxquantError, match="expected None, a jax.sharding.Sharding"):
        checkpoint.restore(tmp_path / "c", sharding=3)


def test_lazy_leaf_by_leaf_restore(tmp_path, params):
    q = jq.quantize(params, "nf4")
    checkpoint.save(tmp_path / "c", q)
    ckpt = checkpoint.open_checkpoint(tmp_path / "c")
    assert set(ckpt.paths) == {"params/fc1/kernel", "params/fc1/bias", "params/fc2/kernel",
                               "params/fc2/bias", "params/norm/scale", "params/norm/bias"}
    kernel = ckpt.leaf("params/fc1/kernel")
    assert_identical(q["params"]["fc1"]["kernel"], kernel)
    got = dict(ckpt.leaves())
    assert_identical(q["params"]["norm"]["scale"], got["params/norm/scale"])
    with pytest.raises(JaxquantError, match="no leaf 'params/nope'"):
        ckpt.leaf("params/nope")


def test_abstract_tree_for_shape_checks(tmp_path, params):
    q = jq.quantize(params, "w4a16")
    checkpoint.save(tmp_path / "c", q)
    abstract = checkpoint.abstract(tmp_path / "c")
    k = abstract["params"]["fc1"]["kernel"]
    assert isinstance(k, jq.QArray) and isinstance(k.qvalue, jax.ShapeDtypeStruct)
    assert k.qvalue.shape == (100, 96) and k.qvalue.dtype == jnp.uint8
    assert k.scale.dtype == jnp.bfloat16 and k.shape == (200, 96)
    model_shapes = jax.eval_shape(Tiny().init, jax.random.key(0), jnp.ones((2, 200)))
    checkpoint.check_tree(abstract, model_shapes)  # matches: no error


def test_tree_that_does_not_match_the_model(tmp_path, params):
    checkpoint.save(tmp_path / "c", jq.quantize(params, "w8a16"))
    wider = jax.eval_shape(Tiny().init, jax.random.key(0), jnp.ones((2, 256)))
    with pytest.raises(JaxquantError, match=r"tensor 'params/fc1/kernel' has shape \(200, 96\), "
                                            r"the model expects \(256, 96\)"):
        checkpoint.restore(tmp_path / "c", target=wider)
    missing = {"params": {**params["params"], "extra": {"kernel": jnp.ones((2, 2))}}}
    with pytest.raises(JaxquantError, match="tensor 'params/extra/kernel' is missing"):
        checkpoint.restore(tmp_path / "c", target=missing)
    fewer = {"params": {k: v for k, v in params["params"].items() if k != "norm"}}
    with pytest.raises(JaxquantError, match="unexpected tensor 'params/norm/"):
        checkpoint.restore(tmp_path / "c", target=fewer)


def test_crash_mid_save_leaves_nothing_that_restores(tmp_path, params, monkeypatch):
    q = jq.quantize(params, "w4a16")
    checkpoint.save(tmp_path / "old", q, jq.get_preset("w4a16"))

    def crash(*a, **k):
        raise KeyboardInterrupt("power cut")

    # the crash comes after the arrays are written, before the manifest
    monkeypatch.setattr(checkpoint.orbax_io, "recipe_to_dict", crash)
    for target in ("new", "old"):
        with pytest.raises(KeyboardInterrupt):
            checkpoint.save(tmp_path / target, q, jq.get_preset("w8a16"), overwrite=True)
    monkeypatch.undo()
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]  # no temporary left behind
    restored, recipe, _ = checkpoint.restore(tmp_path / "old")  # the old one is intact
    assert recipe.name == "w4a16"
    assert_identical(q, restored)


def test_existing_directory_needs_overwrite(tmp_path, params):
    (tmp_path / "c").mkdir()
    with pytest.raises(JaxquantError, match="exists; pass overwrite=True"):
        checkpoint.save(tmp_path / "c", params)


def test_manifest_is_plain_json(tmp_path, params):
    checkpoint.save(tmp_path / "c", jq.quantize(params, "w4a16"), jq.get_preset("w4a16"))
    info = json.loads((tmp_path / "c" / "jaxquant.json").read_text())
    assert info["recipe"]["name"] == "w4a16"
    entry = info["tree"]["params/fc1/kernel"]
    assert entry["meta"]["format"] == "int4_full" and entry["fields"]["qvalue"]["dtype"] == "uint8"
