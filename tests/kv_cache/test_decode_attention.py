"""Decode attention over a quantized cache: the Pallas kernel (interpret mode) and the XLA path
against float64 NumPy on the dequantized values, and against float attention per format."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxquant.kernels._common import KernelArgumentError, UnsupportedShapeError
from jaxquant.kernels.decode_attention import (
    DecodeAttentionConfig,
    KVCacheSpec,
    decode_attention,
    quantize_rows,
)
from jaxquant.kernels.decode_attention.reference import dequantize_cache
from kv_reference import attention_np

# quantized-vs-float attention: relative error bound per format (per-head-and-token scales)
FORMAT_TOL = {"float32": 1e-6, "bf16": 1e-2, "int8": 2e-2, "fp8": 8e-2, "int4": 0.3}


def make_cache(spec: KVCacheSpec, B=2, H=6, Hkv=2, S=80, D=64, seed=0, outlier=False):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(kq, (B, H, D), jnp.float32)
    k = jax.random.normal(kk, (B, Hkv, S, D), jnp.float32)
    v = jax.random.normal(kv, (B, Hkv, S, D), jnp.float32)
    if outlier:  # one channel 30x the rest, as RoPE'd keys have
        k = k.at[..., 5].multiply(30.0)
    kc, ks = quantize_rows(k, spec)
    vc, vs = quantize_rows(v, spec)
    sw = (lambda s: None if s is None else jnp.swapaxes(s, -1, -2))
    return q, (k, v), (kc, vc, sw(ks), sw(vs))


def run(impl, q, stored, lengths, spec, **kw):
    kc, vc, ks, vs = stored
    return decode_attention(q, kc, vc, jnp.asarray(lengths, jnp.int32), spec=spec, k_scale=ks,
                            v_scale=vs, implementation=impl, **kw)


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


SPECS = [KVCacheSpec("float32"), KVCacheSpec("bf16"), KVCacheSpec("int8"),
         KVCacheSpec("int8", 16), KVCacheSpec("fp8"), KVCacheSpec("int4"), KVCacheSpec("int4", 32)]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.format}-g{s.group_size}")
def test_kernel_and_xla_match_float64_on_stored_values(spec):
    q, _, stored = make_cache(spec, outlier=True)
    lengths = [37, 80]  # ragged; the second fills the cache
    kc, vc, ks, vs = stored
    ref = attention_np(q, dequantize_cache(kc, ks, spec), dequantize_cache(vc, vs, spec), lengths)
    for impl, cfg in (("xla", None), ("triton", DecodeAttentionConfig(16, 3)),
                      ("triton", DecodeAttentionConfig(32, 1))):
        assert rel(run(impl, q, stored, lengths, spec, config=cfg), ref) < 1e-5, (impl, cfg)


@pytest.mark.parametrize("fmt", ["bf16", "int8", "fp8", "int4"])
def test_quantized_attention_within_format_tolerance_of_float(fmt):
    spec = KVCacheSpec(fmt)
    q, (k, v), stored = make_cache(spec, seed=4)
    lengths = [80, 1]
    ref = attention_np(q, k, v, lengths)
    err = rel(run("triton", q, stored, lengths, spec), ref)
    assert err < FORMAT_TOL[fmt], err
    assert err == pytest.approx(rel(run("xla", q, stored, lengths, spec), ref), rel=1e-3)


def test_channel_groups_help_with_outliers():
    errs = {}
    for g in (None, 16):
        spec = KVCacheSpec("int4", g)
        q, (k, v), stored = make_cache(spec, outlier=True, seed=5)
        errs[g] = rel(run("triton", q, stored, [80, 80], spec), attention_np(q, k, v, [80, 80]))
    assert errs[16] < errs[None] / 2, errs


def test_gqa_groups_and_bf16_queries():
    spec = KVCacheSpec("int8")
    for H, Hkv in ((8, 2), (3, 1)):
        q, _, stored = make_cache(spec, B=1, H=H, Hkv=Hkv, S=48, D=32, seed=H)
        kc, vc, ks, vs = stored
        ref = attention_np(q, dequantize_cache(kc, ks, spec), dequantize_cache(vc, vs, spec),
                           [41])
        assert rel(run("triton", q, stored, [41], spec), ref) < 1e-5
        out = run("triton", q.astype(jnp.bfloat16), stored, [41], spec)
        assert out.dtype == jnp.bfloat16 and rel(out.astype(jnp.float32), ref) < 2e-2


def test_all_zero_head_and_empty_cache_and_garbage_past_length():
    spec = KVCacheSpec("fp8")
    q, _, (kc, vc, ks, vs) = make_cache(spec, seed=7)
    kc, vc = kc.at[:, 1].set(0), vc.at[:, 1].set(0)  # KV head 1 all zero
    ks, vs = ks.at[:, 1].set(0.0), vs.at[:, 1].set(0.0)
    lengths = [30, 0]
    clean = (kc, vc, ks, vs)
    dirty = (kc, vc, ks.at[:, :, :, 30:].set(jnp.nan), vs.at[:, :, :, 30:].set(jnp.inf))
    for impl in ("xla", "triton"):
        out = np.asarray(run(impl, q, clean, lengths, spec))
        assert np.all(out[0, 3:] == 0)  # query heads 3..5 read the all-zero KV head
        assert np.all(out[1] == 0)  # nothing cached yet
        np.testing.assert_array_equal(np.asarray(run(impl, q, dirty, lengths, spec)), out)


def test_stacked_layers_read_in_place():
    spec = KVCacheSpec("int4")
    q, _, (kc, vc, ks, vs) = make_cache(spec, S=32, seed=8)
    stack = lambda a: jnp.stack([a * 0, a])  # noqa: E731 - layer 0 is all zero
    for impl in ("xla", "triton"):
        one = run(impl, q, (kc, vc, ks, vs), [20, 32], spec)
        both = run(impl, q, tuple(map(stack, (kc, vc, ks, vs))), [20, 32], spec, layer=1)
        np.testing.assert_allclose(np.asarray(both), np.asarray(one), rtol=1e-6, atol=1e-6)


def test_bad_inputs_name_the_fix():
    spec = KVCacheSpec("int8")
    q, _, stored = make_cache(spec, S=16, D=48)
    with pytest.raises(UnsupportedShapeError, match="head_dim=48.*power of two >= 16"):
        run("triton", q, stored, [4, 4], spec)
    assert run(None, q, stored, [4, 4], spec).shape == q.shape  # auto falls back to XLA
    q4, _, stored4 = make_cache(KVCacheSpec("int4"), S=16, D=16)
    with pytest.raises(UnsupportedShapeError, match="int4 needs head_dim >= 32"):
        run("triton", q4, stored4, [4, 4], KVCacheSpec("int4"))
    with pytest.raises(KernelArgumentError, match="lengths go up to 17 but the cache holds 16"):
        run("xla", q, stored, [17, 4], spec)
    with pytest.raises(KernelArgumentError, match="implementation='cuda'"):
        run("cuda", q, stored, [4, 4], spec)
    with pytest.raises(KernelArgumentError, match="fp8 cache stores float8_e4m3fn codes, got int8"):
        run("xla", q, stored, [4, 4], KVCacheSpec("fp8"))
    with pytest.raises(KernelArgumentError, match="k_scale must be float32"):
        decode_attention(q, stored[0], stored[1], jnp.array([4, 4]), spec=spec)
    with pytest.raises(KernelArgumentError, match="layer=3 is outside"):
        decode_attention(q, stored[0][None], stored[1][None], jnp.array([4, 4]), spec=spec,
                         k_scale=stored[2][None], v_scale=stored[3][None], layer=3)
