"""Sharded quantization on 8 simulated CPU devices against one device (see
multidevice_checks.py for what each case computes; this file asserts on its measurements)."""

from __future__ import annotations

import pytest

BIT_EXACT = ["w4a16-g32", "w8a8-int8", "uint4-g32", "nvfp4", "fp8"]


@pytest.mark.parametrize("recipe", BIT_EXACT + ["nf4"])
def test_sharded_quantize_equals_unsharded(multidevice, recipe):
    r = multidevice("quantize")[recipe]
    if recipe == "nf4":
        # double quantization subtracts the mean of all block absmax values: that mean is
        # summed in another order across devices, so it may differ in the last bit
        assert r["o_proj_scale_spec"] == "P()"
    else:
        assert r["bit_exact"], r
    if recipe in ("w8a8-int8", "fp8"):  # per-channel: scales replicated along split K
        assert r["o_proj_scale_spec"] == "P(None, None)"
    elif recipe != "nf4":
        assert r["o_proj_scale_spec"] == "P('model', None)"
        assert r["q_proj_scale_spec"] == "P(None, 'model')"
    assert r["o_proj_qvalue_spec"] == "P('model', None)"
    assert r["q_proj_qvalue_spec"] == "P(None, 'model')"


@pytest.mark.parametrize("recipe", BIT_EXACT)
def test_sharded_quantize_gathers_nothing(multidevice, recipe):
    r = multidevice("quantize")[recipe]
    assert r["collectives"]["all-gather"] == 0 and r["collectives"]["all-to-all"] == 0
    per_device = set(r["per_device_bytes"].values())
    assert len(per_device) == 1 and len(r["per_device_bytes"]) == 8
    # each device holds less than the whole quantized tree, and its program's arguments are
    # its shard of the float tree, not the float tree
    assert per_device.pop() < r["total_bytes"]
    assert r["compiled"]["argument_bytes"] < r["float_total_bytes"] / 2
    assert r["compiled"]["temp_bytes"] < r["float_total_bytes"] / 2


def test_w4a16_packed_codes_split_in_whole_bytes(multidevice):
    r = multidevice("quantize")["w4a16-g32"]
    assert r["o_proj_shard_shape"] == [16, 128]  # 128 inputs / 4 devices / 2 codes a byte


@pytest.mark.parametrize("case", ["w8a8-int8", "w4a16-g32-pallas"])
def test_tensor_parallel_forward_equals_one_device(multidevice, case):
    r = multidevice("forward")[case]
    assert r["layers"] == 14  # 2 blocks x 7 quantized layers traced per shard
    if case == "w8a8-int8":
        # f32 model: float summation order only; the int8 row-parallel dots sum exactly
        assert r["shard_map_max_abs_err"] <= 1e-5 * r["logit_scale"]
        assert r["jit_max_abs_err"] <= 1e-5 * r["logit_scale"]
        assert r["paths"] == ["w8a8-int8", "w8a8-int8-row-parallel"]
        assert r["decode_max_abs_err"] <= 1e-5 * r["logit_scale"]
        assert r["decode_argmax_agree"] == 1.0
        assert r["cache_k_spec"] == "P(None, 'data', 'model')"
    else:
        # bf16 model, Pallas W4A16 kernel per shard: row-parallel partial sums are rounded to
        # bf16 before the psum, about one bf16 step of the logits
        assert r["paths"] == ["pallas-w4a16"]
        assert r["shard_map_max_abs_err"] <= 2 ** -5 * r["logit_scale"]
        assert r["argmax_agree"] >= 0.95
        assert r["jit_max_abs_err"] <= 2 ** -5 * r["logit_scale"]


def test_data_parallel_statistics_reduce_exactly(multidevice):
    r = multidevice("calibration")["reduction"]
    assert r["absmax_exact"] and r["samples_exact"]
    assert r["count"] == [512, 512] and r["filled"] == [300, 300]
    assert r["hessian_max_rel_err"] < 1e-6 and r["abssum_max_rel_err"] < 1e-6


@pytest.mark.parametrize("recipe", ["w4a16-gptq", "w4a16-awq", "w8a8-smoothquant",
                                    "w8a8-smoothquant-sequential"])
def test_data_parallel_calibration_equals_one_device(multidevice, recipe):
    r = multidevice("calibration")[recipe]
    assert r["tokens"] == 256
    # same codes; GPTQ may flip a code by one step where the f32 Hessian sums differ (and with
    # act-order and MSE-clipped group ranges such a flip can move a near-tied clip choice and
    # with it the neighbouring columns' error feedback: ~1e-4 of codes on this model)
    assert r["codes_identical_fraction"] >= 0.999
    assert r["codes_max_step_difference"] <= 1


def test_data_parallel_pipeline_on_one_device_is_the_single_device_pipeline(multidevice):
    assert multidevice("calibration")["one_device_mesh_bit_exact"]


def test_checkpoint_restores_onto_the_mesh(multidevice):
    r = multidevice("checkpoint")
    assert r["bit_exact"] and r["shardings_as_derived"]
    assert r["o_proj_qvalue_spec"] == "P('model', None)" and r["o_proj_shard_shape"] == [16, 128]
    assert r["recipe"] == "w4a16-g32" and r["missing_error"] == "JaxquantError"
    assert len(set(r["per_device_bytes"].values())) == 1
