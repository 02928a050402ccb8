"""QArray as a JAX pytree: jit, vmap, device_put, NamedSharding; storage accounting; printing."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxquant as jq
from jaxquant.core.spec import ArraySpec

CASES = [
    ("int8", (64, 1), False),
    ("int4", (16, 1), False),
    ("uint4", (16, 1), False),
    ("fp8_e4m3", (64, 1), False),
    ("nf4", (16, 1), True),
    ("mxfp4", (32, 1), False),
    ("nvfp4", (16, 1), False),
]


def make(fmt, block, dq, shape=(64, 24), dtype=jnp.bfloat16, seed=0):
    x = jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)
    return x, ArraySpec(fmt, block, 0, "group", double_quant=dq)


def leaves_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for u, v in zip(la, lb):
        assert u.dtype == v.dtype and u.shape == v.shape
        np.testing.assert_array_equal(np.asarray(u).reshape(-1).view(np.uint8),
                                      np.asarray(v).reshape(-1).view(np.uint8))


@pytest.mark.parametrize("fmt,block,dq", CASES)
def test_jit_matches_eager(fmt, block, dq):
    x, spec = make(fmt, block, dq)
    q = jq.quantize_array(x, spec)
    # quantize_array traced inside another jit, and a QArray passed into / out of jit
    q_jit = jax.jit(lambda a: jq.quantize_array(a, spec))(x)
    leaves_equal(q, q_jit)
    assert q_jit.meta == q.meta
    d = jax.jit(lambda qa: qa.dequantize())(q)
    np.testing.assert_array_equal(np.asarray(d), np.asarray(q.dequantize()))
    passthrough = jax.jit(lambda qa: qa)(q)
    assert isinstance(passthrough, jq.QArray) and passthrough.meta == q.meta
    leaves_equal(q, passthrough)


@pytest.mark.parametrize("fmt,block,dq", CASES)
def test_vmap_quantize_then_vmap_dequantize(fmt, block, dq):
    xs = jnp.stack([make(fmt, block, dq, seed=i)[0] for i in range(3)])
    spec = make(fmt, block, dq)[1]
    qs = jax.vmap(lambda a: jq.quantize_array(a, spec))(xs)
    assert isinstance(qs, jq.QArray) and qs.meta.shape == (64, 24)
    assert qs.qvalue.shape[0] == 3
    ds = jax.vmap(lambda qa: qa.dequantize())(qs)
    assert ds.shape == (3, 64, 24) and ds.dtype == jnp.bfloat16
    for i in range(3):
        qi = jq.quantize_array(xs[i], spec)
        np.testing.assert_array_equal(np.asarray(ds[i]), np.asarray(qi.dequantize()))
        leaves_equal(jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], qs), qi)


@pytest.mark.parametrize("fmt,block,dq", CASES)
def test_device_put_and_named_sharding(fmt, block, dq):
    x, spec = make(fmt, block, dq)
    q = jq.quantize_array(x, spec)
    dev = jax.devices()[0]
    q_dev = jax.device_put(q, dev)
    assert isinstance(q_dev, jq.QArray)
    leaves_equal(q, q_dev)
    mesh = jax.make_mesh((1,), ("data",))
    sharding = NamedSharding(mesh, P())
    q_sh = jax.device_put(q, sharding)
    for leaf in jax.tree_util.tree_leaves(q_sh):
        assert leaf.sharding == sharding
    leaves_equal(q, q_sh)
    d = jax.jit(lambda qa: qa.dequantize(), out_shardings=sharding)(q_sh)
    assert d.sharding == sharding
    np.testing.assert_array_equal(np.asarray(d), np.asarray(q.dequantize()))
    # a sharding over the output-channel axis of the codes (size 1 mesh: any split is legal)
    col = NamedSharding(mesh, P(None, "data"))
    qv = jax.device_put(q.qvalue, col)
    assert qv.sharding == col


@pytest.mark.parametrize("fmt,block,dq", CASES)
def test_nbytes_is_the_real_storage(fmt, block, dq):
    x, spec = make(fmt, block, dq, shape=(96, 40))
    q = jq.quantize_array(x, spec)
    real = sum(int(leaf.nbytes) for leaf in jax.tree_util.tree_leaves(q))
    assert q.nbytes == real
    assert q.logical_nbytes == 96 * 40 * 2 and q.size == 96 * 40
    assert q.bits_per_element == pytest.approx(8 * real / (96 * 40))
    # by hand: codes + scales (+ zero-points / nested scales)
    n = 96 * 40
    grid = math.prod(-(-s // b) for s, b in zip((96, 40), block))
    want = {
        "int8": n + 4 * grid,
        "int4": n // 2 + 4 * grid,
        "uint4": n // 2 + 4 * grid + grid,
        "fp8_e4m3": n + 4 * grid,
        "nf4": n // 2 + (-(-grid // 256) * 256) + 4 * (-(-grid // 256)) + 4,
        "mxfp4": n // 2 + grid,
        "nvfp4": n // 2 + grid + 4,
    }[fmt]
    assert q.nbytes == want


def test_int4_g128_bf16_scales_store_at_most_052_bytes_per_parameter():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2048, 256)), jnp.bfloat16)
    q = jq.quantize_array(x, ArraySpec("int4", (128, 1), 0, "group", scale_dtype="bfloat16"))
    assert q.scale.dtype == jnp.bfloat16
    per_param = q.nbytes / q.size
    assert per_param <= 0.52
    assert per_param == pytest.approx(0.5 + 2 / 128)
    # and through the w4a16 preset
    qp = jq.quantize({"dense": {"kernel": x}}, "w4a16")
    assert qp["dense"]["kernel"].nbytes / x.size <= 0.52


def test_repr_shows_format_shape_and_compression():
    x, spec = make("int4", (16, 1), False)
    q = jq.quantize_array(x, spec)
    text = repr(q)
    assert "int4" in text and "(64, 24)" in text and "bfloat16" in text
    ratio = q.logical_nbytes / q.nbytes
    assert f"{ratio:.2f}x smaller" in text
    assert f"{q.nbytes} bytes" in text and "bits/elem" in text
    assert "nf4" in repr(jq.quantize_array(*make("nf4", (16, 1), True)))


def test_qarray_properties_and_eager_methods():
    x, spec = make("uint4", (16, 1), False, shape=(33, 5))
    q = jq.quantize_array(x, spec)
    assert jq.is_qarray(q) and not jq.is_qarray(x)
    assert q.shape == (33, 5) and q.ndim == 2 and q.size == 165
    assert q.dtype == jnp.bfloat16 and q.format == "uint4"
    assert q.qvalue.shape == (17, 5) and q.qvalue.dtype == jnp.uint8  # packed along axis 0
    codes = q.codes()
    assert codes.shape == (33, 5) and int(codes.max()) <= 15
    assert q.block_scale().shape == q.meta.grid == (3, 5)  # ragged: 33 = 2 x 16 + 1
    assert q.zero_point.shape == (3, 5)
    # dequantize = (code - zero_point) * scale, elementwise by hand
    zp = np.repeat(np.asarray(q.zero_point, np.float32), 16, axis=0)[:33]
    sc = np.repeat(np.asarray(q.block_scale()), 16, axis=0)[:33]
    want = ((np.asarray(codes, np.float32) - zp) * sc).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(q.dequantize()), want)


def test_meta_is_static_and_hashable():
    x, spec = make("int8", (64, 1), False)
    q = jq.quantize_array(x, spec)
    hash(q.meta)
    leaves, treedef = jax.tree_util.tree_flatten(q)
    assert len(leaves) == 2  # qvalue and scale: the meta is part of the tree structure
    q2 = jax.tree_util.tree_unflatten(treedef, leaves)
    assert q2.meta == q.meta
