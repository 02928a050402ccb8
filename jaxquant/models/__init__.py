"""Reference models: a Llama-family decoder, its GGUF loader, tokenizer and generation."""

from jaxquant.models.llama import Llama, LlamaConfig
from jaxquant.models.registry import KNOWN_MODELS, LoadedModel, load_model

__all__ = ["KNOWN_MODELS", "Llama", "LlamaConfig", "LoadedModel", "load_model"]
