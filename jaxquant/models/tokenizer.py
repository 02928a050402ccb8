"""A HuggingFace `tokenizers` byte-level BPE tokenizer built from a GGUF file's own metadata."""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxquant.errors import JaxquantError

# llama.cpp pre-tokenizer names whose splitting is GPT-2's byte-level regex, optionally with
# digits split one by one (SmolLM, StarCoder style).
_DIGITS_SPLIT = {"smollm", "starcoder", "refact", "smaug-bpe"}
_GPT2_LIKE = {"gpt2", "default", "smollm", "starcoder", "refact", "olmo", "poro-chat",
              "viking", "jais", "tekken", "smaug-bpe", "gpt-2", "qwen2"}


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    """encode(text) -> list[int]; decode(ids) -> text. bos/eos ids from the GGUF metadata."""

    backend: Any
    bos_id: int | None
    eos_id: int | None

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)


def tokenizer_from_gguf(reader, path: str = "") -> Tokenizer:
    from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

    fields = reader.fields
    model = fields["tokenizer.ggml.model"].contents() if "tokenizer.ggml.model" in fields else None
    if model != "gpt2":
        raise JaxquantError(f"{path}: tokenizer model {model!r} is not byte-level BPE ('gpt2')")
    pre = fields["tokenizer.ggml.pre"].contents() if "tokenizer.ggml.pre" in fields else "default"
    if pre not in _GPT2_LIKE:
        raise JaxquantError(f"{path}: pre-tokenizer {pre!r} is not supported")
    tokens = fields["tokenizer.ggml.tokens"].contents()
    merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"].contents()]
    types = fields["tokenizer.ggml.token_type"].contents() if \
        "tokenizer.ggml.token_type" in fields else [1] * len(tokens)
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        if pre in _DIGITS_SPLIT else byte_level
    )
    tok.decoder = decoders.ByteLevel()
    # control tokens (type 3) are matched whole, never split by BPE
    tok.add_special_tokens([AddedToken(t, special=True) for t, ty in zip(tokens, types) if ty == 3])

    def _id(key: str) -> int | None:
        f = fields.get(key)
        return int(f.contents()) if f is not None else None

    return Tokenizer(tok, _id("tokenizer.ggml.bos_token_id"), _id("tokenizer.ggml.eos_token_id"))
