"""GGUF tensors: exact types become QArrays whose dequantization equals the gguf package's
bit for bit; types with a per-block minimum are dequantized; damaged files are errors."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

import jaxquant as jq
from jaxquant.errors import JaxquantError
from jaxquant.interop.gguf_tensors import import_gguf
from jaxquant.interop.layout import transpose2d

T = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("gguf") / "t.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    x = rng.standard_normal((6, 256)).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block
    x[1, 7] = 60.0  # an outlier
    for qt in ("Q8_0", "Q4_0", "Q5_0", "Q4_1", "Q5_1"):
        w.add_tensor(qt.lower(), gguf.quants.quantize(x, T[qt]), raw_dtype=T[qt])
    raw = rng.integers(0, 256, size=(6, 2 * 210), dtype=np.uint8)  # Q6_K: random codes/scales
    for sb in range(2):
        raw[:, sb * 210 + 208: sb * 210 + 210] = np.full((6, 1), 0.01 * (sb + 1),
                                                         np.float16).view(np.uint8)
    w.add_tensor("q6_k", raw, raw_dtype=T.Q6_K)
    w.add_tensor("f16", x.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("name, fmt, block", [("q8_0", "int8", 32), ("q4_0", "int4", 32),
                                              ("q5_0", "int8", 32), ("q6_k", "int8", 16)])
def test_exact_types_become_qarrays(gguf_file, name, fmt, block):
    reader = gguf.GGUFReader(str(gguf_file))
    t = next(t for t in reader.tensors if t.name == name)
    want = gguf.quants.dequantize(t.data, t.tensor_type).reshape(6, 512 if name == "q6_k" else 256)
    q = import_gguf(gguf_file, [name])[name]
    assert isinstance(q, jq.QArray)
    assert q.meta.format == fmt and q.meta.block_shape == (1, block)
    np.testing.assert_array_equal(np.asarray(q.dequantize()), want)
    kernel = transpose2d(q)  # Flax [in, out] layout
    assert kernel.meta.axis == 0 and kernel.meta.block_shape == (block, 1)
    np.testing.assert_array_equal(np.asarray(kernel.dequantize()), want.T)


@pytest.mark.parametrize("name", ["q4_1", "q5_1", "f16"])
def test_other_types_are_dequantized(gguf_file, name):
    out = import_gguf(gguf_file, [name])[name]
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (6, 256)


def test_compression_of_exact_imports(gguf_file):
    q = import_gguf(gguf_file, ["q4_0"])["q4_0"]
    assert q.nbytes == 6 * 256 // 2 + 6 * 8 * 4  # nibbles + one f32 scale per 32


def test_missing_tensor_and_damaged_file(gguf_file, tmp_path):
    with pytest.raises(JaxquantError, match="no tensor 'nope' in the file"):
        import_gguf(gguf_file, ["nope"])
    data = gguf_file.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) - 500])
    with pytest.raises(JaxquantError, match="truncated"):
        import_gguf(tmp_path / "cut.gguf")
    (tmp_path / "bad.gguf").write_bytes(b"GGML" + data[4:])
    with pytest.raises(JaxquantError, match="is not a GGUF file"):
        import_gguf(tmp_path / "bad.gguf")
