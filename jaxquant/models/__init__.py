"""Reference models: a Llama-family decoder, its GGUF loader, tokenizer and generation."""

from jaxquant.models.generate import GenerationResult, Sampling, generate, generate_text
from jaxquant.models.gguf_loader import GGUFError, load_gguf
from jaxquant.models.kv_cache import KVCache, init_cache
from jaxquant.models.llama import Llama, LlamaConfig
from jaxquant.models.registry import KNOWN_MODELS, LoadedModel, ModelNotFoundError, load_model
from jaxquant.models.tokenizer import Tokenizer, TokenizerError

__all__ = [
    "GGUFError",
    "GenerationResult",
    "KNOWN_MODELS",
    "KVCache",
    "Llama",
    "LlamaConfig",
    "LoadedModel",
    "ModelNotFoundError",
    "Sampling",
    "Tokenizer",
    "TokenizerError",
    "generate",
    "generate_text",
    "init_cache",
    "load_gguf",
    "load_model",
]
