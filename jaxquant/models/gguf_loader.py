"""Loading Llama-family GGUF files (llama.cpp's format) into the Linen Llama parameter tree.

Tensors are dequantized to float32 by the `gguf` package (Q4_0/Q4_1/Q8_0/K-quants/F16/F32).
llama.cpp stores attn_q/attn_k rows permuted for interleaved-pair RoPE; they are permuted back
to the HF rotate-half layout our model (and HF checkpoints) use. Nothing is read from a network.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxquant.errors import JaxquantError
from jaxquant.models.llama import LlamaConfig

SUPPORTED_ARCHS = ("llama",)


def _reader(path: Path):
    import gguf

    if not path.is_file():
        raise JaxquantError(f"GGUF file {str(path)!r} does not exist")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise JaxquantError(f"{str(path)!r} is not a GGUF file (magic {magic!r}, expected b'GGUF')")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # the gguf package raises assorted errors on damaged files
        raise JaxquantError(f"{str(path)!r}: unreadable GGUF file ({type(e).__name__}: {e})") from None


def _field(reader, key: str, path: Path, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        if default is not None:
            return default
        raise JaxquantError(f"{path}: GGUF metadata key {key!r} is missing")
    return f.contents()


def read_config(reader, path: Path) -> LlamaConfig:
    arch = _field(reader, "general.architecture", path)
    if arch not in SUPPORTED_ARCHS:
        raise JaxquantError(f"{path}: architecture {arch!r} is not supported "
                            f"(supported: {', '.join(SUPPORTED_ARCHS)})")
    d = int(_field(reader, f"{arch}.embedding_length", path))
    n_heads = int(_field(reader, f"{arch}.attention.head_count", path))
    tensor_names = {t.name for t in reader.tensors}
    vocab = len(reader.fields["tokenizer.ggml.tokens"].data) if \
        "tokenizer.ggml.tokens" in reader.fields else int(_field(reader, f"{arch}.vocab_size", path))
    return LlamaConfig(
        vocab_size=vocab,
        d_model=d,
        n_layers=int(_field(reader, f"{arch}.block_count", path)),
        n_heads=n_heads,
        n_kv_heads=int(_field(reader, f"{arch}.attention.head_count_kv", path, n_heads)),
        head_dim=int(_field(reader, f"{arch}.rope.dimension_count", path, d // n_heads)),
        ffn_dim=int(_field(reader, f"{arch}.feed_forward_length", path)),
        rope_theta=float(_field(reader, f"{arch}.rope.freq_base", path, 10000.0)),
        rms_eps=float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", path, 1e-5)),
        tie_embeddings="output.weight" not in tensor_names,
        max_seq_len=int(_field(reader, f"{arch}.context_length", path, 2048)),
    )


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k permutation. w [n_heads * head_dim, in] (PyTorch layout)."""
    out_dim = w.shape[0]
    head_dim = out_dim // n_heads
    return (w.reshape(n_heads, head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2)
            .reshape(w.shape))


def load_gguf(path: str | os.PathLike) -> tuple[LlamaConfig, dict, Any]:
    """GGUF file -> (config, {"params": ...} float32 numpy tree, the open GGUFReader)."""
    import gguf

    path = Path(path)
    reader = _reader(path)
    cfg = read_config(reader, path)
    tensors = {t.name: t for t in reader.tensors}

    def get(name: str) -> np.ndarray:
        t = tensors.get(name)
        if t is None:
            raise JaxquantError(f"{path}: tensor {name!r} is missing")
        try:
            arr = gguf.quants.dequantize(t.data, t.tensor_type)
        except Exception as e:
            raise JaxquantError(f"{path}: tensor {name!r} ({t.tensor_type.name}) could not be "
                                f"decoded: {e}") from None
        return np.asarray(arr, np.float32).reshape(tuple(int(s) for s in reversed(t.shape)))

    def kernel(name: str, n_heads: int | None = None) -> np.ndarray:
        w = get(name)  # [out, in]
        if n_heads is not None:
            w = unpermute_rope_rows(w, n_heads)
        return np.ascontiguousarray(w.T)

    params: dict[str, Any] = {"embed": {"embedding": get("token_embd.weight")}}
    for i in range(cfg.n_layers):
        p = f"blk.{i}."
        params[f"layers_{i}"] = {
            "input_norm": {"scale": get(p + "attn_norm.weight")},
            "post_attn_norm": {"scale": get(p + "ffn_norm.weight")},
            "attn": {
                "q_proj": {"kernel": kernel(p + "attn_q.weight", cfg.n_heads)},
                "k_proj": {"kernel": kernel(p + "attn_k.weight", cfg.n_kv_heads)},
                "v_proj": {"kernel": kernel(p + "attn_v.weight")},
                "o_proj": {"kernel": kernel(p + "attn_output.weight")},
            },
            "mlp": {
                "gate_proj": {"kernel": kernel(p + "ffn_gate.weight")},
                "up_proj": {"kernel": kernel(p + "ffn_up.weight")},
                "down_proj": {"kernel": kernel(p + "ffn_down.weight")},
            },
        }
    params["final_norm"] = {"scale": get("output_norm.weight")}
    if not cfg.tie_embeddings:
        params["lm_head"] = {"kernel": kernel("output.weight")}
    emb = params["embed"]["embedding"]
    if emb.shape != (cfg.vocab_size, cfg.d_model):
        raise JaxquantError(f"{path}: token_embd has shape {emb.shape}, expected "
                            f"{(cfg.vocab_size, cfg.d_model)}")
    return cfg, {"params": params}, reader
