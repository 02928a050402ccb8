"""A HuggingFace `tokenizers` byte-level BPE tokenizer built from a GGUF file's own metadata.

Uses tokenizer.ggml.{model, pre, tokens, merges, token_type, bos_token_id, eos_token_id,
add_bos_token}. The pre-tokenizer follows llama.cpp's `tokenizer.ggml.pre` name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from jaxquant.errors import JaxquantError

# GPT-2's byte-level split, with digits first split one by one (llama.cpp's "smollm" family).
_DIGIT_SPLIT_PRES = frozenset({"smollm", "starcoder", "refact", "codeshell", "exaone"})
_GPT2_PRES = frozenset({"default", "gpt2", "gpt-2"})
# Llama 3's split regex (llama.cpp "llama-bpe"); digits in runs of at most 3.
_LLAMA3_PRES = frozenset({"llama-bpe", "llama3", "dbrx", "smaug-bpe"})
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SUPPORTED_PRE_TOKENIZERS = tuple(sorted(_DIGIT_SPLIT_PRES | _GPT2_PRES | _LLAMA3_PRES))

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


class TokenizerError(JaxquantError):
    """GGUF tokenizer metadata that is missing or of an unsupported kind."""


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    """encode(text) -> list[int]; decode(ids) -> str. `backend` is a tokenizers.Tokenizer."""

    backend: Any
    bos_id: int | None
    eos_id: int | None
    add_bos: bool = False

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of `text`; a BOS id first when add_bos (default: the GGUF's add_bos_token).

        Control tokens written in the text (e.g. "<|im_start|>") become their single ids."""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        """Text of `ids`; control tokens are dropped when skip_special."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def token(self, token_id: int) -> str | None:
        """The vocabulary string (byte-level form) of one id."""
        return self.backend.id_to_token(int(token_id))


def _pre_tokenizer(pre: str, source: str) -> tuple[Any, bool]:
    """(pre_tokenizer, ignore_merges) for llama.cpp's pre-tokenizer name."""
    from tokenizers import Regex, pre_tokenizers

    if pre in _GPT2_PRES:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), False
    if pre in _DIGIT_SPLIT_PRES:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]), False
    if pre in _LLAMA3_PRES:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_LLAMA3_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]), True
    raise TokenizerError(f"{source}: pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not "
                         f"supported; supported: {', '.join(SUPPORTED_PRE_TOKENIZERS)}")


def tokenizer_from_metadata(meta: dict[str, Any], source: str = "GGUF file") -> Tokenizer:
    """Build the tokenizer from decoded GGUF metadata (see gguf_loader.read_metadata)."""
    from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models

    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise TokenizerError(f"{source}: tokenizer.ggml.model is {model!r}; only byte-level "
                             "BPE ('gpt2') tokenizers are supported")
    tokens, merges = meta.get("tokenizer.ggml.tokens"), meta.get("tokenizer.ggml.merges")
    if not tokens or merges is None:
        raise TokenizerError(f"{source}: tokenizer.ggml.tokens / tokenizer.ggml.merges missing")
    pre_tok, ignore_merges = _pre_tokenizer(meta.get("tokenizer.ggml.pre", "default"), source)
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    bpe = models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, ignore_merges=ignore_merges)
    tok = HFTokenizer(bpe)
    tok.pre_tokenizer = pre_tok
    tok.decoder = decoders.ByteLevel()
    # control and user-defined tokens are matched whole in text, never split by BPE
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == _CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, ty in zip(tokens, types) if ty == _USER_DEFINED])

    def token_id(key: str) -> int | None:
        v = meta.get(key)
        return int(v) if v is not None else None

    return Tokenizer(tok, token_id("tokenizer.ggml.bos_token_id"),
                     token_id("tokenizer.ggml.eos_token_id"),
                     bool(meta.get("tokenizer.ggml.add_bos_token", False)))
