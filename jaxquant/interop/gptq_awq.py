"""AutoGPTQ / GPTQModel and AutoAWQ checkpoints (safetensors), imported without torch.

Per quantized Linear `<m>` with in/out features and k = 32 / bits codes per int32:
  GPTQ  <m>.qweight int32 [in / k, out] (codes along `in`, code j of a word at bit j * bits),
        <m>.qzeros int32 [groups, out / k] (along `out`), <m>.scales f16 [groups, out],
        <m>.g_idx int32 [in] (group of every input row; act-order permutes it).
        checkpoint_format "gptq" (v1, AutoGPTQ) stores zero - 1; "gptq_v2" (GPTQModel) stores
        zero. W[i, :] = scales[g_idx[i]] * (q[i] - zero[g_idx[i]]).
  AWQ   <m>.qweight int32 [in, out / 8], <m>.qzeros int32 [groups, out / 8], both packed along
        `out` in AWQ's order (nibble i holds element AWQ_ORDER[i] of 8), <m>.scales f16
        [groups, out]. W = (q - zero) * scale, group of row i = i // group_size.
Layers import as "uint{bits}" QArrays (Flax kernel [in, out], block (group, 1)), exactly.
Act-order layers keep their groups contiguous by permuting the kernel's rows: ImportedLinear
.input_perm (y = x[..., perm] @ W_perm).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from jaxquant.errors import JaxquantError
from jaxquant.interop import int32_packing as packing
from jaxquant.interop.imported import ImportedCheckpoint, ImportedLinear
from jaxquant.interop.layout import make_qarray
from jaxquant.interop.safetensors_io import SafetensorsFile

_SUFFIXES = ("qweight", "qzeros", "scales", "g_idx")


class GPTQAWQError(JaxquantError):
    """A GPTQ/AWQ checkpoint that is malformed or uses an unsupported setting."""


def read_quant_config(path: Path) -> dict:
    """quantize_config.json, else config.json's quantization_config."""
    for name, key in (("quantize_config.json", None), ("config.json", "quantization_config")):
        f = path / name
        if f.is_file():
            try:
                cfg = json.loads(f.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise GPTQAWQError(f"{f}: corrupted JSON: {e}") from None
            cfg = cfg.get(key) if key and isinstance(cfg, dict) else cfg
            if isinstance(cfg, dict):
                return cfg
    raise GPTQAWQError(f"{path}: no quantize_config.json or quantization_config in config.json")


def _read(f: SafetensorsFile, name: str, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    if name not in f:
        raise GPTQAWQError(f"{f.path}: tensor {name!r} is missing")
    got_dtype, got_shape = f.entries[name]
    if got_dtype != np.dtype(dtype) or got_shape != shape:
        raise GPTQAWQError(f"{f.path}: tensor {name!r} is {got_dtype}{list(got_shape)}, expected "
                           f"{np.dtype(dtype)}{list(shape)}")
    return f.read(name)


def _dims(f: SafetensorsFile, layer: str, k_in: int) -> tuple[int, int]:
    """(in, out) from qweight / scales headers, before reading anything."""
    for n in (f"{layer}.qweight", f"{layer}.scales"):
        if n not in f:
            raise GPTQAWQError(f"{f.path}: tensor {n!r} is missing")
    qw, sc = f.entries[f"{layer}.qweight"][1], f.entries[f"{layer}.scales"][1]
    if len(qw) != 2 or len(sc) != 2:
        raise GPTQAWQError(f"{f.path}: {layer}.qweight / .scales must be 2-D, got {list(qw)} / "
                           f"{list(sc)}")
    return qw[0] * k_in, sc[1]


def import_gptq_layer(f: SafetensorsFile, layer: str, bits: int, group: int, v1: bool
                      ) -> ImportedLinear:
    if bits not in (2, 4, 8):
        raise GPTQAWQError(f"{layer}: {bits}-bit GPTQ is not supported (2, 4, 8)")
    k = 32 // bits
    inp, out = _dims(f, layer, k)
    group = inp if group in (-1, None, 0) else group
    if inp % group or out % k:
        raise GPTQAWQError(f"{layer}: in_features {inp} / out_features {out} do not fit group "
                           f"{group} and {k} codes per int32")
    n_groups = inp // group
    qweight = _read(f, f"{layer}.qweight", np.int32, (inp // k, out))
    qzeros = _read(f, f"{layer}.qzeros", np.int32, (n_groups, out // k))
    scales = _read(f, f"{layer}.scales", np.float16, (n_groups, out))
    if f"{layer}.g_idx" in f:
        g_idx = _read(f, f"{layer}.g_idx", np.int32, (inp,)).astype(np.int64)
    else:
        g_idx = np.arange(inp) // group
    if g_idx.min(initial=0) < 0 or g_idx.max(initial=0) >= n_groups:
        raise GPTQAWQError(f"{f.path}: tensor '{layer}.g_idx' has group indices outside "
                           f"[0, {n_groups})")
    codes = packing.unpack_sequential(qweight, bits, axis=0)  # [in, out]
    zeros = packing.unpack_sequential(qzeros, bits, axis=1).astype(np.int32) + (1 if v1 else 0)
    perm = None
    if not np.array_equal(g_idx, np.arange(inp) // group):  # act-order
        counts = np.bincount(g_idx, minlength=n_groups)
        if not np.all(counts == group):
            raise GPTQAWQError(f"{f.path}: tensor '{layer}.g_idx' does not give every group "
                               f"{group} rows (counts {counts.tolist()[:8]}...)")
        perm = np.argsort(g_idx, kind="stable").astype(np.int32)
        codes = codes[perm]
    q = make_qarray(codes, scales, zeros, f"uint{bits}", (group, 1), 0, "float16", layer)
    return ImportedLinear(q, perm)


def import_awq_layer(f: SafetensorsFile, layer: str, bits: int, group: int) -> ImportedLinear:
    if bits != 4:
        raise GPTQAWQError(f"{layer}: AWQ GEMM checkpoints are 4-bit; got bits={bits}")
    if f"{layer}.qweight" not in f or len(f.entries[f"{layer}.qweight"][1]) != 2:
        raise GPTQAWQError(f"{f.path}: tensor '{layer}.qweight' is missing or not 2-D")
    inp = f.entries[f"{layer}.qweight"][1][0]
    _, out = _dims(f, layer, 1)
    if inp % group or out % 8:
        raise GPTQAWQError(f"{layer}: in_features {inp} / out_features {out} do not fit group "
                           f"{group} and 8 codes per int32")
    n_groups = inp // group
    qweight = _read(f, f"{layer}.qweight", np.int32, (inp, out // 8))
    qzeros = _read(f, f"{layer}.qzeros", np.int32, (n_groups, out // 8))
    scales = _read(f, f"{layer}.scales", np.float16, (n_groups, out))
    codes = packing.unpack_sequential(qweight, 4, axis=1, order=packing.AWQ_ORDER)
    zeros = packing.unpack_sequential(qzeros, 4, axis=1, order=packing.AWQ_ORDER)
    q = make_qarray(codes, scales, zeros, "uint4", (group, 1), 0, "float16", layer)
    return ImportedLinear(q)


def detect(path: str | os.PathLike) -> str | None:
    """"gptq", "awq" or None from the directory's quantization config."""
    try:
        cfg = read_quant_config(Path(path))
    except GPTQAWQError:
        return None
    method = str(cfg.get("quant_method", "gptq" if "desc_act" in cfg else "")).lower()
    return method if method in ("gptq", "awq") else None


def import_dir(path: str | os.PathLike) -> ImportedCheckpoint:
    """Read a GPTQ or AWQ safetensors directory (model*.safetensors + its config)."""
    path = Path(path)
    cfg = read_quant_config(path)
    method = detect(path)
    if method is None:
        raise GPTQAWQError(f"{path}: quant_method {cfg.get('quant_method')!r} is neither gptq "
                           "nor awq")
    bits = int(cfg.get("bits", cfg.get("w_bit", 4)))
    group = int(cfg.get("group_size", cfg.get("q_group_size", 128)))
    if method == "awq" and str(cfg.get("version", "gemm")).lower() != "gemm":
        raise GPTQAWQError(f"{path}: AWQ version {cfg.get('version')!r} is not supported (gemm)")
    v1 = str(cfg.get("checkpoint_format", "gptq")).lower() != "gptq_v2"
    files = sorted(path.glob("model*.safetensors"))
    if not files:
        raise GPTQAWQError(f"{path}: no model*.safetensors files")
    layers: dict[str, ImportedLinear] = {}
    tensors: dict[str, np.ndarray] = {}
    for p in files:
        f = SafetensorsFile(p)
        quantized = sorted({n[: -len(".qweight")] for n in f.names() if n.endswith(".qweight")})
        for layer in quantized:
            layers[layer] = (import_gptq_layer(f, layer, bits, group, v1) if method == "gptq"
                             else import_awq_layer(f, layer, bits, group))
        for name in f.names():
            prefix, _, suffix = name.rpartition(".")
            if not (prefix in layers and suffix in _SUFFIXES):
                tensors[name] = f.read(name)
    return ImportedCheckpoint(method, layers, tensors, cfg)
