"""The SmolLM2 tokenizer built from GGUF metadata: round trips, sensible counts, special tokens."""

from __future__ import annotations

import pytest

from jaxquant.evaluation.text import evaluation_text
from jaxquant.models.tokenizer import TokenizerError, tokenizer_from_metadata

SAMPLES = [
    "Emma Woodhouse, handsome, clever, and rich, with a comfortable home",
    "  leading spaces, tabs\tand\nnew lines\n\n",
    "Numbers: 3.14159, 2024-11-24, $1,000,000.",
    "Unicode: naïve café, “curly quotes” — em dash, 日本語, emoji 🙂",
    "def f(x):\n    return x ** 2  # code",
    "<|im_start|>user\nHello<|im_end|>\n",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(smollm2, text):
    tok = smollm2.tokenizer
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_bundled_text_round_trip_and_counts(smollm2):
    tok = smollm2.tokenizer
    text = evaluation_text()[:40_000]
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    words = len(text.split())
    # English prose: about 1.3 tokens per word, about 4 characters per token
    assert 1.1 < len(ids) / words < 1.7, len(ids) / words
    assert 3.3 < len(text) / len(ids) < 5.0, len(text) / len(ids)


def test_smollm_pretokenizer_and_special_tokens(smollm2):
    tok = smollm2.tokenizer
    assert tok.vocab_size == 49152 and (tok.bos_id, tok.eos_id) == (1, 2)
    assert [tok.token(i) for i in tok.encode("Hello world")] == ["Hello", "Ġworld"]
    assert [tok.token(i) for i in tok.encode(" 2024")] == ["Ġ", "2", "0", "2", "4"]  # digits split
    assert tok.encode("<|im_start|>") == [1] and tok.encode("<|im_end|>") == [2]
    ids = tok.encode("<|im_start|>Hi<|im_end|>")
    assert tok.decode(ids, skip_special=True) == "Hi"
    assert tok.encode("Hi", add_bos=True)[0] == tok.bos_id


def test_unsupported_tokenizers():
    with pytest.raises(TokenizerError, match="only byte-level BPE"):
        tokenizer_from_metadata({"tokenizer.ggml.model": "llama"}, "x.gguf")
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "mystery",
            "tokenizer.ggml.tokens": ["a"], "tokenizer.ggml.merges": []}
    with pytest.raises(TokenizerError, match=r"x\.gguf: pre-tokenizer 'mystery'.*smollm"):
        tokenizer_from_metadata(meta, "x.gguf")
