"""The full-range symmetric integer grid (int8_full / int4_full / int3_full / int2_full): scale
= amax / (2^(b-1) - 0.5), codes clipped to [-2^(b-1), 2^(b-1) - 1]; the same storage as int{b}.
Checked by hand, against the float64 reference, and through every consumer of the format:
W8A8 activations, QAT straight-through gradients, the W4A16 kernel (interpret mode),
compressed-tensors export, recipe files and --bits."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy_reference as R  # noqa: E402

import jaxquant as jq  # noqa: E402
from jaxquant.core.spec import ArraySpec  # noqa: E402


def test_int4_full_bit_patterns_by_hand():
    # amax 7.5 -> scale 1: +7.5 rounds (half to even) to 8 and is clipped to 7; -7.5 -> -8
    x = jnp.array([-7.5, 7.5, -1.0, 0.0, 7.2, 6.5], jnp.float32)
    q = jq.quantize_array(x, ArraySpec("int4_full", (6,), 0, "tensor"))
    assert float(q.block_scale()[0]) == 1.0
    assert np.asarray(q.codes()).tolist() == [0b1000, 0b0111, 0b1111, 0, 0b0111, 0b0110]
    assert np.asarray(q.qvalue).tolist() == [0x78, 0x0F, 0x67]  # even index in the low nibble
    np.testing.assert_array_equal(np.asarray(q.dequantize()), [-8, 7, -1, 0, 7, 6])
    # the same bytes read as int4 (same storage and decoding) dequantize identically
    as_int4 = dataclasses.replace(q, meta=dataclasses.replace(q.meta, format="int4"))
    np.testing.assert_array_equal(np.asarray(as_int4.dequantize()), [-8, 7, -1, 0, 7, 6])


def test_int8_full_and_codec_ranges():
    # amax 127.5 / 16 -> scale 1/16 exactly: -amax is -127.5 steps -> -128 (half to even);
    # +amax would be clipped to 127. Only a block's -amax can reach -128 (a tie of two codes
    # equally far away), so the extra level mostly buys the finer step amax / 127.5.
    q = jq.quantize_array(jnp.array([-7.96875, 7.96875, 3.984375, 0.2], jnp.float32),
                          ArraySpec("int8_full", (4,), 0, "tensor"))
    assert q.qvalue.dtype == jnp.int8
    assert float(q.block_scale()[0]) == 0.0625
    assert np.asarray(q.qvalue).tolist() == [-128, 127, 64, 3]
    for b in (8, 4, 3, 2):
        full, restricted = jq.get_format(f"int{b}_full").codec, jq.get_format(f"int{b}").codec
        assert full.qmax == 2 ** (b - 1) - 0.5 and restricted.qmax == 2 ** (b - 1) - 1
        assert full.code_bounds == (-(2 ** (b - 1)), 2 ** (b - 1) - 1)
        assert restricted.code_bounds == (-(2 ** (b - 1) - 1), 2 ** (b - 1) - 1)
        assert full.storage_dtype == restricted.storage_dtype


@pytest.mark.parametrize("fmt", sorted(R.FULL_INT_BITS))
def test_matches_float64_reference_and_half_step_bound(fmt):
    rng = np.random.default_rng(R.FULL_INT_BITS[fmt])
    x = (rng.standard_normal((200, 24)) * np.exp(rng.normal(size=24))).astype(np.float32)
    block = (64, 1)  # 200 = 3 x 64 + 8: a ragged last group
    q = jq.quantize_array(jnp.asarray(x), ArraySpec(fmt, block, 0, "group",
                                                    scale_dtype="bfloat16"))
    ref = R.reference_quantize(x, fmt, block, "bfloat16")
    R.check_against_reference(ref, R.as_reference_codes(fmt, q.codes()), q.block_scale(),
                              q.dequantize(jnp.float32))
    s = R.broadcast_blocks(np.asarray(q.block_scale(), np.float64), x.shape, block)
    err = np.abs(np.asarray(q.dequantize(jnp.float32), np.float64) - x)
    assert (err <= s * (0.5 + 2**-18)).all()


@pytest.mark.parametrize("bits", [4, 3])
def test_full_grid_has_lower_error_than_restricted(bits):
    """Sixteen levels with step amax / 7.5 beat fifteen with step amax / 7 on Gaussian groups."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((512, 64)), jnp.float32)
    err = {}
    for fmt in (f"int{bits}", f"int{bits}_full"):
        d = jq.fake_quantize(x, ArraySpec(fmt, (128, 1), 0, "group"))
        err[fmt] = float(jnp.mean((d - x) ** 2))
    assert err[f"int{bits}_full"] < 0.95 * err[f"int{bits}"]


def test_w8a8_int8_full_activations_match_float64():
    """int8_full weights and per-token int8_full activations: codes reach -128, the int8 dot
    equals the float64 product of the dequantized operands."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 96)).astype(np.float32)
    x[:, 7] = np.abs(x).max(axis=1) + 0.5  # every token's amax is positive: clipped 127.5 -> 127
    x[0, 9] = -x[0, 7]                     # one token also holds -amax: -128 (exact: scale 2^k)
    x[0] *= 2.0 ** 5 * 127.5 / x[0, 7]
    w = rng.standard_normal((96, 16)).astype(np.float32)
    act = jq.activation_scheme("int8_full", "token")
    recipe = jq.Recipe((jq.Rule(("kernel",), jq.WeightScheme("int8_full"), activation=act),),
                       ignore=())
    qw = jq.quantize({"kernel": jnp.asarray(w)}, recipe)["kernel"]
    out = np.asarray(jq.quantized_dot_general(jnp.asarray(x), qw, (((1,), (0,)), ((), ()))),
                     np.float64)
    s = np.abs(x.astype(np.float64)).max(axis=1, keepdims=True) / 127.5
    xq = np.clip(np.rint(x / s), -128, 127)
    assert xq[0].min() == -128 and (xq.max(axis=1) == 127).all()
    ref = (xq * s) @ np.asarray(qw.dequantize(jnp.float32), np.float64)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_ste_gradient_passes_every_element_of_a_minmax_block():
    from jaxquant.qat.ste import code_range, fake_quant_ste

    assert code_range(jq.get_format("int4_full")) == (-8.0, 7.5)
    assert code_range(jq.get_format("int4")) == (-7.0, 7.0)
    x = jnp.asarray(np.random.default_rng(4).standard_normal((64, 8)), jnp.float32)
    spec = ArraySpec("int4_full", (32, 1), 0, "group")
    y, vjp = jax.vjp(lambda v: fake_quant_ste(v, spec), x)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(jq.fake_quantize(x, spec)))
    np.testing.assert_array_equal(np.asarray(vjp(jnp.ones_like(x))[0]), 1.0)


class _Dense(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(128, use_bias=False, name="proj")(x)


def test_w4a16_kernel_decodes_minus_eight():
    """The Pallas W4A16 kernel (interpret mode on CPU) on an int4_full weight whose codes cover
    [-8, 7] (a quarter of them -8): equal to the float64 product of the bf16 activations and
    the dequantized weights."""
    from jaxquant.interop.layout import make_qarray

    model = _Dense()
    x = jax.random.normal(jax.random.key(1), (4, 256)).astype(jnp.bfloat16)
    rng = np.random.default_rng(5)
    codes = rng.integers(-8, 8, (256, 128))
    codes[rng.random(codes.shape) < 0.25] = -8
    scale = (rng.uniform(0.5, 2.0, (2, 128)) / 8).astype(jnp.bfloat16)
    w = make_qarray(codes, np.asarray(scale), None, "int4_full", (128, 1), 0, "float32", "proj")
    q = {"params": {"proj": {"kernel": w}}}
    with jq.intercept(backend="pallas", report=True) as rep:
        out = jax.jit(model.apply)(q, x)
    assert rep.rows == [("proj", "int4_full", "pallas-w4a16")]
    ref = np.asarray(x, np.float64) @ np.asarray(w.dequantize(jnp.float32), np.float64)
    o = np.asarray(out.astype(jnp.float32), np.float64)
    # a -8 decoded as +8 would move an output by 16 steps; bf16 output rounding is 2^-8
    assert np.max(np.abs(o - ref)) <= 2**-7 * np.max(np.abs(ref))


def test_compressed_tensors_export_writes_the_symmetric_layout(tmp_path):
    """int4_full exports as compressed-tensors' symmetric int4 (codes + 8 packed into int32),
    and imports back as int4 (same storage and decoding) with identical values."""
    from jaxquant.interop import compressed_tensors as ct
    from jaxquant.interop import int32_packing
    from jaxquant.interop.safetensors_io import SafetensorsFile

    kernel = jax.random.normal(jax.random.key(2), (128, 64))
    tree = {"params": {"layers_0": {"attn": {"q_proj": {"kernel": kernel}}}}}
    recipe = jq.Recipe((jq.Rule(("kernel",), jq.WeightScheme("int4_full", group_size=32)),))
    q = jq.quantize(tree, recipe)
    ct.export_dir(tmp_path / "out", q, recipe=recipe)
    cfg = (tmp_path / "out" / "config.json").read_text()
    w_args = next(iter(__import__("json").loads(cfg)["quantization_config"]["config_groups"]
                       .values()))["weights"]
    assert (w_args["num_bits"], w_args["type"], w_args["symmetric"], w_args["group_size"]) == (
        4, "int", True, 32)
    f = SafetensorsFile(tmp_path / "out" / "model.safetensors")
    packed = f.read("model.layers.0.self_attn.q_proj.weight_packed")
    unsigned = int32_packing.unpack_dense(packed, 4, 128)  # [out, in], code + 8
    ql = q["params"]["layers_0"]["attn"]["q_proj"]["kernel"]
    signed = np.where(np.asarray(ql.codes()) >= 8, np.asarray(ql.codes()).astype(int) - 16,
                      np.asarray(ql.codes()))
    np.testing.assert_array_equal(unsigned.astype(int) - 8, signed.T)
    assert (unsigned == 0).any()  # -8 is written as 0
    back = ct.import_dir(tmp_path / "out").to_params()
    got = back["params"]["layers_0"]["attn"]["q_proj"]["kernel"]
    assert got.format == "int4"
    np.testing.assert_array_equal(np.asarray(got.dequantize()), np.asarray(ql.dequantize()))


def test_recipe_file_and_bits_override(tmp_path):
    from jaxquant.cli.pipeline import with_overrides
    from jaxquant.recipes.io import load_recipe

    f = tmp_path / "r.yaml"
    f.write_text("rules:\n  - targets: ['re:kernel$']\n"
                 "    weight: {format: int4_full, group_size: 128, ragged_groups: true}\n"
                 "    method: gptq\n")
    r = load_recipe(f)
    assert r.rules[0].weight.format == "int4_full" and r.rules[0].method == "gptq"
    assert with_overrides(r, None, 3).rules[0].weight.format == "int3_full"
    assert with_overrides(jq.get_preset("w4a16-asym"), None, 3).rules[0].weight.format == "uint3"


@pytest.mark.parametrize("fmt", ["int4_full", "int3_full", "int8_full"])
def test_signed_scale_clips_nothing(fmt):
    """Clipping(signed=True): scale = max(hi / qhi, lo / qlo) per block (float64 reference), so
    each block's positive maximum or negative minimum lands exactly on the end code and no
    element is off by more than half a step; all-zero blocks stay zero."""
    from jaxquant.core.spec import Clipping
    from jaxquant.formats import get_format

    qlo, qhi = get_format(fmt).codec.code_bounds
    rng = np.random.default_rng(5)
    x = rng.standard_normal((192, 16)).astype(np.float32)
    x[:, 3] = np.abs(x[:, 3])  # all-positive columns and all-negative columns
    x[:, 4] = -np.abs(x[:, 4])
    x[:64, 5] = 0.0  # an all-zero block
    block = (64, 1)
    spec = ArraySpec(fmt, block, 0, "group", clipping=Clipping(signed=True))
    q = jq.quantize_array(jnp.asarray(x), spec)
    xb = x.astype(np.float64).reshape(3, 64, 16)
    lo, hi = np.minimum(xb.min(1), 0.0), np.maximum(xb.max(1), 0.0)
    ref = np.maximum(hi / qhi, lo / qlo)
    ref = np.where(ref > 0, ref, 1.0)
    got = np.asarray(q.block_scale(), np.float64).reshape(ref.shape)
    np.testing.assert_allclose(got, ref, rtol=2e-7)
    d = np.asarray(q.dequantize(jnp.float32), np.float64)
    s = np.repeat(got, 64, axis=0)
    assert (np.abs(d - x) <= s * (0.5 + 1e-6)).all()
    assert (d[:64, 5] == 0).all()
    # each block maximum of the all-positive column is exact; the default rule (amax / qmax)
    # clips it by half a step
    dflt = jq.quantize_array(jnp.asarray(x), ArraySpec(fmt, block, 0, "group"))
    dd = np.asarray(dflt.dequantize(jnp.float32), np.float64)
    top = [64 * b + int(np.argmax(x[64 * b: 64 * (b + 1), 3])) for b in range(3)]
    np.testing.assert_allclose(d[top, 3], x[top, 3], rtol=1e-6)
    step = np.asarray(dflt.block_scale(), np.float64).reshape(3, 16)[:, 3]
    assert (np.abs(dd[top, 3] - x[top, 3]) > 0.45 * step).all()
    # restricted grids ignore it
    r = jq.quantize_array(jnp.asarray(x), ArraySpec(fmt.replace("_full", ""), block, 0, "group",
                                                    clipping=Clipping(signed=True)))
    r0 = jq.quantize_array(jnp.asarray(x), ArraySpec(fmt.replace("_full", ""), block, 0, "group"))
    np.testing.assert_array_equal(np.asarray(r.qvalue), np.asarray(r0.qvalue))
