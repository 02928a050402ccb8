"""Load a Llama-family GGUF file (llama.cpp's format) into the Linen `Llama` parameter tree.

Tensors are dequantized to float32 by the `gguf` package (F32/F16/BF16, Q4_0/Q4_1/Q8_0,
K-quants, ...). GGUF stores a matrix as [out, in] (PyTorch layout); kernels become [in, out].
llama.cpp's converter permutes the rows of attn_q/attn_k for interleaved-pair RoPE; they are
permuted back to the HF rotate-half layout, so the tree matches a HuggingFace checkpoint's.
The file is read locally, never from a network.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxquant.errors import JaxquantError
from jaxquant.models.llama import LlamaConfig

SUPPORTED_ARCHS = ("llama",)

_LAYER_TENSORS = {  # GGUF name in block i -> (path under layers_i, is a kernel, rope heads)
    "attn_norm.weight": (("input_norm", "scale"), False, None),
    "ffn_norm.weight": (("post_attn_norm", "scale"), False, None),
    "attn_q.weight": (("attn", "q_proj", "kernel"), True, "n_heads"),
    "attn_k.weight": (("attn", "k_proj", "kernel"), True, "n_kv_heads"),
    "attn_v.weight": (("attn", "v_proj", "kernel"), True, None),
    "attn_output.weight": (("attn", "o_proj", "kernel"), True, None),
    "ffn_gate.weight": (("mlp", "gate_proj", "kernel"), True, None),
    "ffn_up.weight": (("mlp", "up_proj", "kernel"), True, None),
    "ffn_down.weight": (("mlp", "down_proj", "kernel"), True, None),
}


class GGUFError(JaxquantError):
    """A GGUF file that is missing, unreadable, of an unsupported architecture, or incomplete."""


@dataclasses.dataclass(frozen=True)
class GGUFModel:
    """What a GGUF file holds: config, params {"params": ...} as float32 numpy, metadata."""

    path: Path
    config: LlamaConfig
    params: dict[str, Any]
    metadata: dict[str, Any]


@functools.lru_cache(maxsize=2)
def _reader(path: str, size: int, mtime_ns: int) -> Any:
    """gguf.GGUFReader (read-only memmap), kept per file version: parsing the key/value section
    of a model with a 49k-token vocabulary takes the gguf package ~10 s."""
    import gguf

    del size, mtime_ns  # part of the cache key only
    return gguf.GGUFReader(path, "r")


def open_gguf(path: str | os.PathLike) -> Any:
    """A `gguf.GGUFReader` over `path`; GGUFError naming the file when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"GGUF file {str(path)!r} does not exist (or is not a file)")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise GGUFError(f"GGUF file {str(path)!r} cannot be read: {e}") from None
    if magic != b"GGUF":
        raise GGUFError(f"{str(path)!r} is not a GGUF file: it starts with {magic!r}, "
                        "not b'GGUF'")
    stat = path.stat()
    try:
        reader = _reader(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    except Exception as e:  # the gguf package raises assorted errors on damaged files
        raise GGUFError(f"GGUF file {str(path)!r} is damaged or truncated "
                        f"({type(e).__name__}: {e})") from None
    size = stat.st_size
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            raise GGUFError(f"GGUF file {str(path)!r} is truncated: tensor {t.name!r} ends at "
                            f"byte {t.data_offset + t.n_bytes}, the file has {size}")
    return reader


def _field_value(field: Any) -> Any:
    """Decode one GGUF key/value (gguf.ReaderField) to str, int, float, bool or a list."""
    import gguf

    types = field.types
    if not types:
        return None

    def scalar(part: np.ndarray, vtype: Any) -> Any:
        if vtype == gguf.GGUFValueType.STRING:
            return bytes(part).decode("utf-8", errors="replace")
        v = part[0]
        return bool(v) if vtype == gguf.GGUFValueType.BOOL else v.item()

    if types[0] == gguf.GGUFValueType.ARRAY:
        if len(types) < 2:
            return []
        return [scalar(field.parts[i], types[1]) for i in field.data]
    return scalar(field.parts[field.data[0]], types[0])


def read_metadata(reader: Any) -> dict[str, Any]:
    """All key/values of an open GGUF file, decoded (tokenizer vocab and merges included)."""
    return {k: _field_value(f) for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def config_from_metadata(meta: dict[str, Any], tensor_names: set[str], path: Path,
                         dtype: Any = jnp.float32) -> LlamaConfig:
    """LlamaConfig from the `{arch}.*` keys; GGUFError for an unsupported architecture."""
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise GGUFError(f"{path}: architecture {arch!r} is not supported "
                        f"(supported: {', '.join(SUPPORTED_ARCHS)})")

    def key(name: str, default: Any = None) -> Any:
        v = meta.get(f"{arch}.{name}", default)
        if v is None:
            raise GGUFError(f"{path}: GGUF metadata key '{arch}.{name}' is missing")
        return v

    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", None) or "rope_freqs.weight" in tensor_names:
        raise GGUFError(f"{path}: RoPE scaling ({scaling!r}, or a rope_freqs tensor) is not "
                        "supported")
    d_model, n_heads = int(key("embedding_length")), int(key("attention.head_count"))
    head_dim = int(key("attention.key_length", d_model // n_heads))
    if int(key("rope.dimension_count", head_dim)) != head_dim:
        raise GGUFError(f"{path}: partial RoPE (rope.dimension_count="
                        f"{key('rope.dimension_count')} < head_dim={head_dim}) is not supported")
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = int(key("vocab_size", len(tokens) if tokens else None))
    try:
        return LlamaConfig(
            vocab_size=vocab,
            d_model=d_model,
            n_layers=int(key("block_count")),
            n_heads=n_heads,
            n_kv_heads=int(key("attention.head_count_kv", n_heads)),
            head_dim=head_dim,
            ffn_dim=int(key("feed_forward_length")),
            rope_theta=float(key("rope.freq_base", 10000.0)),
            rms_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
            tie_embeddings="output.weight" not in tensor_names,
            max_seq_len=int(key("context_length", 2048)),
            dtype=dtype,
        )
    except JaxquantError as e:
        raise GGUFError(f"{path}: inconsistent hyperparameters: {e}") from None


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: w [n_heads * head_dim, in] (GGUF/PyTorch layout).

    llama.cpp reorders each head's rows (j, i) -> (i, j) for j in {0, 1}, i < head_dim / 2;
    this is the inverse, giving HF's rotate-half layout."""
    head_dim = w.shape[0] // n_heads
    return w.reshape(n_heads, head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def expected_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """GGUF tensor name -> numpy shape ([out, in] for matrices) that `cfg` requires."""
    d, hd, f = cfg.d_model, cfg.head_dim, cfg.ffn_dim
    layer = {
        "attn_norm.weight": (d,), "ffn_norm.weight": (d,),
        "attn_q.weight": (cfg.n_heads * hd, d), "attn_k.weight": (cfg.n_kv_heads * hd, d),
        "attn_v.weight": (cfg.n_kv_heads * hd, d), "attn_output.weight": (d, cfg.n_heads * hd),
        "ffn_gate.weight": (f, d), "ffn_up.weight": (f, d), "ffn_down.weight": (d, f),
    }
    shapes = {"token_embd.weight": (cfg.vocab_size, d), "output_norm.weight": (d,)}
    if not cfg.tie_embeddings:
        shapes["output.weight"] = (cfg.vocab_size, d)
    for i in range(cfg.n_layers):
        shapes.update({f"blk.{i}.{k}": s for k, s in layer.items()})
    return shapes


def _check_tensor_names(names: set[str], cfg: LlamaConfig, path: Path) -> None:
    expected = expected_shapes(cfg)
    missing = sorted(set(expected) - names)
    if missing:
        more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        raise GGUFError(f"{path}: {len(missing)} tensor(s) missing for a {cfg.n_layers}-layer "
                        f"Llama: {', '.join(missing[:8])}{more}")
    extra = sorted(names - set(expected))
    if extra:
        raise GGUFError(f"{path}: tensors this Llama loader does not know (another architecture "
                        f"variant?): {', '.join(extra[:8])}")


def load_gguf(path: str | os.PathLike, dtype: Any = jnp.float32,
              n_layers: int | None = None) -> GGUFModel:
    """Read a Llama-family GGUF file: config (compute dtype `dtype`), float32 numpy params.
    n_layers keeps only the first n decoder blocks (fast experiments and tests; the result is
    a smaller model, not the file's)."""
    import gguf

    path = Path(path)
    reader = open_gguf(path)
    meta = read_metadata(reader)
    tensors = {t.name: t for t in reader.tensors}
    cfg = config_from_metadata(meta, set(tensors), path, dtype)
    _check_tensor_names(set(tensors), cfg, path)
    if n_layers is not None:
        if not isinstance(n_layers, int) or not 1 <= n_layers <= cfg.n_layers:
            raise GGUFError(f"n_layers={n_layers!r}: {path} has {cfg.n_layers} decoder blocks; "
                            f"pass 1..{cfg.n_layers} (or None for all)")
        cfg = dataclasses.replace(cfg, n_layers=n_layers)
    shapes = expected_shapes(cfg)

    def get(name: str) -> np.ndarray:
        t = tensors[name]
        try:
            arr = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
        except Exception as e:  # unsupported quant type, damaged data
            raise GGUFError(f"{path}: tensor {name!r} ({t.tensor_type.name}) cannot be "
                            f"dequantized: {type(e).__name__}: {e}") from None
        shape = tuple(int(s) for s in reversed(t.shape))  # GGUF lists dims innermost first
        if shape != shapes[name]:
            raise GGUFError(f"{path}: tensor {name!r} has shape {shape}, the metadata implies "
                            f"{shapes[name]}")
        return arr.reshape(shape)

    params: dict[str, Any] = {"embed": {"embedding": get("token_embd.weight")}}
    for i in range(cfg.n_layers):
        layer: dict[str, Any] = {}
        for name, (sub, is_kernel, rope_heads) in _LAYER_TENSORS.items():
            w = get(f"blk.{i}.{name}")
            if rope_heads is not None:
                w = unpermute_rope_rows(w, getattr(cfg, rope_heads))
            node = layer
            for part in sub[:-1]:
                node = node.setdefault(part, {})
            node[sub[-1]] = np.ascontiguousarray(w.T) if is_kernel else w
        params[f"layers_{i}"] = layer
    params["final_norm"] = {"scale": get("output_norm.weight")}
    if not cfg.tie_embeddings:
        params["lm_head"] = {"kernel": np.ascontiguousarray(get("output.weight").T)}
    return GGUFModel(path, cfg, {"params": params}, meta)

