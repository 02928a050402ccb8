"""compressed-tensors checkpoints (llm-compressor writes them, vLLM serves them), no torch.

A directory with config.json ("quantization_config": quant_method "compressed-tensors",
config_groups of QuantizationArgs) and *.safetensors. Per quantized Linear `<m>` (W [out, in]):
  pack-quantized  <m>.weight_packed int32 [out, ceil(in * bits / 32)]: int codes q in
                  [-2^(b-1), 2^(b-1) - 1] plus 2^(b-1), densely packed along `in` (see
                  int32_packing); <m>.weight_scale [out, in / group] (channel: [out, 1]; tensor:
                  [1]); <m>.weight_shape int [2]; asymmetric group/channel: <m>.weight_zero_point
                  int32 [ceil(out * bits / 32), groups], int zero-points plus 2^(b-1) packed along
                  `out`. W = (q - zero_point) * scale; groups must divide `in`.
  float-quantized / naive-quantized  <m>.weight float8_e4m3fn (or int8) [out, in] and
                  <m>.weight_scale [out, 1] (channel) or [1] (tensor). W = weight * scale.
Imported layers become jaxquant formats exactly: symmetric int b -> "int{b}", asymmetric ->
"uint{b}" (codes and zero-points shifted by 2^(b-1)), fp8 -> "fp8_e4m3"; scales keep their dtype
(bf16/f32; f16 widened to f32). Export is the inverse and writes config.json with the
quantization_config plus a "jaxquant" key (base model, recipe) that import reads back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from jaxquant.checkpoint.atomic import atomic_directory
from jaxquant.core.qarray import QArray
from jaxquant.core.spec import ActivationSpec
from jaxquant.errors import JaxquantError
from jaxquant.formats.registry import get_format
from jaxquant.interop import int32_packing as packing
from jaxquant.interop.hf_names import to_hf
from jaxquant.interop.imported import ImportedCheckpoint, ImportedLinear
from jaxquant.interop.layout import int_codes, make_qarray, transpose2d
from jaxquant.interop.safetensors_io import SafetensorsFile, write
from jaxquant.tree_paths import flatten

QUANT_METHOD = "compressed-tensors"
_SUFFIXES = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape", "weight")


class CompressedTensorsError(JaxquantError):
    """A compressed-tensors checkpoint that is malformed or uses an unsupported scheme."""


def read_config(path: Path) -> dict:
    f = path / "config.json"
    if not f.is_file():
        raise CompressedTensorsError(f"{path}: no config.json")
    try:
        cfg = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CompressedTensorsError(f"{f}: corrupted JSON: {e}") from None
    q = cfg.get("quantization_config") if isinstance(cfg, dict) else None
    if not isinstance(q, dict):
        raise CompressedTensorsError(f"{f}: no quantization_config")
    return cfg


def scheme_for(layer: str, qcfg: dict) -> dict:
    """The weights QuantizationArgs of the config group targeting `layer` (or the only Linear
    group), plus "format" and "input_activations"."""
    groups = qcfg.get("config_groups") or {}
    if not isinstance(groups, dict) or not groups:
        raise CompressedTensorsError("quantization_config has no config_groups")
    chosen = [g for g in groups.values() if layer in g.get("targets", []) or any(
        t.startswith("re:") and re.fullmatch(t[3:], layer) for t in g.get("targets", []))]
    chosen = chosen or [g for g in groups.values() if "Linear" in g.get("targets", [])]
    if len(chosen) != 1:
        raise CompressedTensorsError(f"no single config group of quantization_config targets "
                                     f"{layer!r}")
    g = chosen[0]
    return {**g.get("weights", {}), "format": g.get("format") or qcfg.get("format"),
            "input_activations": g.get("input_activations")}


def activation_from_args(args: dict | None, layer: str) -> ActivationSpec | None:
    """compressed-tensors input_activations (dynamic, 8-bit, per token or tensor) ->
    ActivationSpec; static activation scales are not read."""
    if not args:
        return None
    kind, strategy = args.get("type"), args.get("strategy")
    if (args.get("num_bits") != 8 or kind not in ("int", "float") or strategy not in
            ("token", "tensor") or not args.get("dynamic", False)):
        raise CompressedTensorsError(f"{layer}: input_activations {args} are not supported "
                                     "(dynamic 8-bit int/float per token or tensor)")
    return ActivationSpec("int8" if kind == "int" else "fp8_e4m3", strategy, dynamic=True)


def activation_to_args(spec: ActivationSpec | None, layer: str) -> dict | None:
    if spec is None:
        return None
    if not spec.dynamic or spec.format not in ("int8", "fp8_e4m3"):
        raise CompressedTensorsError(f"{layer}: activation scheme {spec.format} "
                                     f"{'dynamic' if spec.dynamic else 'static'} has no "
                                     "compressed-tensors export (dynamic int8/fp8_e4m3 has)")
    return dict(num_bits=8, type="int" if spec.format == "int8" else "float", symmetric=True,
                strategy=spec.granularity, dynamic=True)


def _need(f: SafetensorsFile, name: str, dtypes: tuple[Any, ...], shape: tuple[int, ...] | None
          ) -> np.ndarray:
    if name not in f:
        raise CompressedTensorsError(f"{f.path}: tensor {name!r} is missing")
    dtype, got = f.entries[name]
    if dtype not in [np.dtype(d) for d in dtypes]:
        raise CompressedTensorsError(f"{f.path}: tensor {name!r} has dtype {dtype}, expected "
                                     f"{' or '.join(str(np.dtype(d)) for d in dtypes)}")
    if shape is not None and got != shape:
        raise CompressedTensorsError(f"{f.path}: tensor {name!r} has shape {list(got)}, "
                                     f"expected {list(shape)}")
    return f.read(name)


_SCALE_DTYPES = (np.float32, ml_dtypes.bfloat16, np.float16)


def _scale_grid(strategy: str, group: int | None, out: int, inp: int, name: str
                ) -> tuple[tuple[int, int], tuple[int, int]]:
    """(scale shape in the file [out-side, in-side], jaxquant block on [in, out])."""
    if strategy == "group":
        if not group or inp % group:
            raise CompressedTensorsError(f"{name}: group_size {group} does not divide in_features "
                                         f"{inp}")
        return (out, inp // group), (group, 1)
    if strategy == "channel":
        return (out, 1), (inp, 1)
    if strategy == "tensor":
        return (1,), (inp, out)
    raise CompressedTensorsError(f"{name}: strategy {strategy!r} is not supported (group, "
                                 "channel, tensor)")


def import_layer(f: SafetensorsFile, layer: str, scheme: dict, dtype: str | None = None
                 ) -> ImportedLinear:
    """One compressed Linear `layer` of file `f` -> a Flax-kernel QArray [in, out]."""
    bits, kind = scheme.get("num_bits"), scheme.get("type", "int")
    strategy, group = scheme.get("strategy"), scheme.get("group_size")
    sym = scheme.get("symmetric", True)
    if scheme.get("actorder") not in (None, False) and f"{layer}.weight_g_idx" in f:
        raise CompressedTensorsError(f"{layer}: activation-ordered groups (weight_g_idx) are not "
                                     "supported")
    if kind == "float":
        if bits != 8:
            raise CompressedTensorsError(f"{layer}: float weights of {bits} bits are not "
                                         "supported (FP8 only)")
        w = _need(f, f"{layer}.weight", (ml_dtypes.float8_e4m3fn,), None)
        if w.ndim != 2:
            raise CompressedTensorsError(f"{layer}.weight: expected 2-D, got {list(w.shape)}")
        out, inp = w.shape
        s_shape, block = _scale_grid(strategy, group, out, inp, layer)
        scale = _need(f, f"{layer}.weight_scale", _SCALE_DTYPES, None)
        scale = _fit_scale(scale, s_shape, f"{layer}.weight_scale", f)
        dt = dtype or _logical_dtype(scale)
        q = make_qarray(w.T, _grid_on_kernel(scale, block, inp, out), None, "fp8_e4m3", block, 0,
                        dt, layer)
        return ImportedLinear(q)
    if kind != "int" or bits not in (2, 3, 4, 8):
        raise CompressedTensorsError(f"{layer}: {kind} weights of {bits} bits are not supported "
                                     "(int 2/3/4/8, float 8)")
    offset = 1 << (bits - 1)
    if f"{layer}.weight_packed" in f:
        shape = _need(f, f"{layer}.weight_shape", (np.int64, np.int32), (2,))
        out, inp = (int(v) for v in shape)
        if out <= 0 or inp <= 0:
            raise CompressedTensorsError(f"{layer}.weight_shape: bad shape {shape.tolist()}")
        packed = _need(f, f"{layer}.weight_packed", (np.int32,),
                       (out, packing.dense_words(inp, bits)))
        signed = packing.unpack_dense(packed, bits, inp).astype(np.int32) - offset
    else:  # naive int8: the codes themselves
        signed = _need(f, f"{layer}.weight", (np.int8,), None).astype(np.int32)
        if signed.ndim != 2 or bits != 8:
            raise CompressedTensorsError(f"{layer}.weight: expected 2-D int8 codes")
        out, inp = signed.shape
    s_shape, block = _scale_grid(strategy, group, out, inp, layer)
    scale = _fit_scale(_need(f, f"{layer}.weight_scale", _SCALE_DTYPES, None), s_shape,
                       f"{layer}.weight_scale", f)
    dt = dtype or _logical_dtype(scale)
    scale_k = _grid_on_kernel(scale, block, inp, out)
    if sym:
        q = make_qarray(signed.T, scale_k, None, f"int{bits}", block, 0, dt, layer)
        return ImportedLinear(q)
    name = f"{layer}.weight_zero_point"
    n_groups = s_shape[-1] if len(s_shape) == 2 else 1
    if strategy in ("group", "channel"):
        zp_packed = _need(f, name, (np.int32,), (packing.dense_words(out, bits), n_groups))
        zp = packing.unpack_dense(zp_packed.T, bits, out).astype(np.int32)  # [groups, out]
    else:
        zp = _need(f, name, (np.int8, np.int32), None).astype(np.int32).reshape(1, 1) + offset
    if strategy == "tensor":
        zp = zp.reshape(1, 1)
    q = make_qarray((signed + offset).T, scale_k, zp, f"uint{bits}", block, 0, dt, layer)
    return ImportedLinear(q)


def _fit_scale(scale: np.ndarray, want: tuple[int, ...], name: str, f: SafetensorsFile
               ) -> np.ndarray:
    if scale.size != int(np.prod(want)) or (scale.ndim == 2 and tuple(scale.shape) != want):
        raise CompressedTensorsError(f"{f.path}: tensor {name!r} has shape {list(scale.shape)}, "
                                     f"expected {list(want)}")
    return scale.reshape(want)


def _grid_on_kernel(scale: np.ndarray, block: tuple[int, int], inp: int, out: int) -> np.ndarray:
    """File scale ([out, groups] / [out, 1] / [1]) -> the kernel's grid [groups, out] / [1, 1]."""
    if block == (inp, out):
        return scale.reshape(1, 1)
    return np.ascontiguousarray(scale.T)


def _logical_dtype(scale: np.ndarray) -> str:
    return {"bfloat16": "bfloat16", "float16": "float16"}.get(scale.dtype.name, "float32")


def _files(path: Path) -> list[SafetensorsFile]:
    """The model's weight files: model.safetensors or its shards model-0000i-of-0000n."""
    files = sorted(path.glob("model*.safetensors"))
    if not files:
        raise CompressedTensorsError(f"{path}: no model*.safetensors files")
    return [SafetensorsFile(p) for p in files]


def import_dir(path: str | os.PathLike, dtype: str | None = None) -> ImportedCheckpoint:
    """Read a compressed-tensors directory: every quantized Linear as an ImportedLinear (Flax
    kernel layout), every other tensor as numpy (HF name and layout). The layers' logical dtype
    is `dtype`, else config.json's torch_dtype, else their scales' dtype."""
    path = Path(path)
    cfg = read_config(path)
    qcfg = cfg["quantization_config"]
    if qcfg.get("quant_method") != QUANT_METHOD:
        raise CompressedTensorsError(f"{path}: quant_method is {qcfg.get('quant_method')!r}, not "
                                     f"{QUANT_METHOD!r}")
    if qcfg.get("quantization_status", "compressed") != "compressed":
        raise CompressedTensorsError(f"{path}: quantization_status is "
                                     f"{qcfg.get('quantization_status')!r}; only compressed "
                                     "checkpoints are read")
    torch_dtype = cfg.get("torch_dtype") or cfg.get("dtype")
    dtype = dtype or (torch_dtype if torch_dtype in ("float32", "bfloat16", "float16") else None)
    layers: dict[str, ImportedLinear] = {}
    tensors: dict[str, np.ndarray] = {}
    for f in _files(path):
        quantized = {n.rsplit(".", 1)[0] for n in f.names()
                     if n.endswith((".weight_scale", ".weight_packed"))}
        for layer in sorted(quantized):
            scheme = scheme_for(layer, qcfg)
            lin = import_layer(f, layer, scheme, dtype)
            act = activation_from_args(scheme["input_activations"], layer)
            if act is not None:
                lin.weight = dataclasses.replace(
                    lin.weight, meta=dataclasses.replace(lin.weight.meta, activation=act))
            layers[layer] = lin
        for name in f.names():
            prefix, _, suffix = name.rpartition(".")
            if prefix in quantized and suffix in _SUFFIXES:
                continue
            tensors[name] = f.read(name)
    return ImportedCheckpoint(QUANT_METHOD, layers, tensors, qcfg, cfg.get("jaxquant", {}))


def export_layer(q: QArray, name: str) -> tuple[dict[str, np.ndarray], dict]:
    """A Flax-kernel QArray [in, out] (axis 0) -> (tensors without the layer prefix, the
    QuantizationArgs dict of its config group)."""
    fmt = get_format(q.meta.format)
    if q.ndim != 2 or q.meta.axis != 0 or isinstance(q.scale, QArray) or q.offset is not None:
        raise CompressedTensorsError(f"{name}: only 2-D kernels quantized along axis 0 with "
                                     f"plain scales export to compressed-tensors, got {q!r}")
    inp, out = q.meta.shape
    b_in, b_out = q.meta.block_shape
    if (b_in, b_out) == (inp, out):
        strategy, group = "tensor", None
    elif b_out == 1 and b_in == inp:
        strategy, group = "channel", None
    elif b_out == 1 and inp % b_in == 0:
        strategy, group = "group", b_in
    else:
        raise CompressedTensorsError(
            f"{name}: block {q.meta.block_shape} of shape {q.meta.shape} has no compressed-tensors"
            f" equivalent (groups must divide in_features={inp}: e.g. group sizes "
            f"{[g for g in (8, 16, 32, 64, 128, 256) if inp % g == 0]}); quantize with such a "
            "group size or export with --format orbax")
    w = transpose2d(q)  # [out, in], axis 1
    scale = np.asarray(w.scale)
    scale = scale.reshape(1) if strategy == "tensor" else scale
    if q.meta.format == "fp8_e4m3":
        args = dict(num_bits=8, type="float", symmetric=True, strategy=strategy,
                    group_size=group, dynamic=False)
        return {"weight": np.asarray(w.qvalue), "weight_scale": scale}, args
    if not q.meta.format.startswith(("int", "uint")):
        raise CompressedTensorsError(f"{name}: format {q.meta.format} has no compressed-tensors "
                                     "pack-quantized equivalent (int2/3/4/8, uint2/3/4/8, "
                                     "fp8_e4m3 do); export with --format orbax")
    bits = fmt.bits
    offset = 1 << (bits - 1)
    codes = int_codes(w)  # [out, in]
    unsigned = codes if fmt.asymmetric else codes + offset
    if not fmt.asymmetric and codes.min(initial=0) < -offset:
        raise CompressedTensorsError(f"{name}: codes out of the {bits}-bit range")
    tensors = {"weight_packed": packing.pack_dense(unsigned, bits),
               "weight_scale": scale,
               "weight_shape": np.array([out, inp], np.int64)}
    if fmt.asymmetric:
        zp = np.asarray(w.zero_point).astype(np.int32)  # [out, groups], stored with the offset
        if strategy == "tensor":
            tensors["weight_zero_point"] = (zp.reshape(1) - offset).astype(np.int8)
        else:
            tensors["weight_zero_point"] = packing.pack_dense(zp.T, bits).T.copy()
    args = dict(num_bits=bits, type="int", symmetric=not fmt.asymmetric, strategy=strategy,
                group_size=group, dynamic=False)
    return tensors, args


def export_dir(path: str | os.PathLike, tree: Any, *, recipe: Any = None,
               base_model: str | None = None, overwrite: bool = False) -> Path:
    """Write `tree` as a compressed-tensors directory (model.safetensors + config.json),
    atomically (temporary sibling renamed into place). Weights in the GPU layout are written
    in the canonical one."""
    from jaxquant import __version__
    from jaxquant.inference.gpu_layout import to_canonical
    from jaxquant.recipes.io import recipe_to_dict

    tree = to_canonical(tree)

    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise JaxquantError(f"output directory {str(path)!r} exists; pass overwrite=True "
                            "(--overwrite) or choose another path")
    tensors: dict[str, np.ndarray] = {}
    groups: dict[str, dict] = {}
    for leaf_path, leaf in flatten(tree)[0]:
        hf, kernel = to_hf(leaf_path, len(leaf.shape))
        if isinstance(leaf, QArray):
            if not kernel:
                raise CompressedTensorsError(f"{leaf_path}: only Dense kernels export quantized "
                                             "(keep embeddings in float: the default ignore list)")
            prefix = hf[: -len(".weight")]
            layer_tensors, args = export_layer(leaf, leaf_path)
            tensors.update({f"{prefix}.{k}": v for k, v in layer_tensors.items()})
            act = activation_to_args(leaf.meta.activation, leaf_path)
            key = json.dumps([args, act], sort_keys=True)
            groups.setdefault(key, {"targets": [], "weights": args, "input_activations": act}
                              )["targets"].append(prefix)
        else:
            arr = np.asarray(leaf)
            tensors[hf] = np.ascontiguousarray(arr.T) if kernel else arr
    fmts = {"float" if g["weights"]["type"] == "float" else "int" for g in groups.values()}
    fmt = "mixed-precision" if len(fmts) > 1 else (
        "float-quantized" if fmts == {"float"} else "pack-quantized")
    config_groups = {}
    for i, g in enumerate(groups.values()):
        g_fmt = "float-quantized" if g["weights"]["type"] == "float" else "pack-quantized"
        config_groups[f"group_{i}"] = {"targets": g["targets"], "weights": g["weights"],
                                       "input_activations": g["input_activations"],
                                       "output_activations": None, "format": g_fmt}
    logical = [leaf.meta.dtype for _, leaf in flatten(tree)[0] if isinstance(leaf, QArray)]
    config = {
        "torch_dtype": logical[0] if logical else "bfloat16",
        "quantization_config": {
            "quant_method": QUANT_METHOD, "format": fmt, "quantization_status": "compressed",
            "config_groups": config_groups, "ignore": [], "kv_cache_scheme": None,
        },
        "jaxquant": {"library_version": __version__, "base_model": base_model,
                     "recipe": recipe_to_dict(recipe) if recipe is not None else None},
    }
    with atomic_directory(path) as tmp:
        write(tmp / "model.safetensors", tensors, metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
    return path
