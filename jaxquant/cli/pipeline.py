"""The steps the command-line tool chains: load, quantize (and calibrate), evaluate, generate."""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

import jaxquant as jq
from jaxquant import checkpoint
from jaxquant.calibration.activations import calibrate_activations
from jaxquant.errors import JaxquantError
from jaxquant.evaluation import perplexity, read_text
from jaxquant.evaluation.perplexity import PerplexityResult, windows
from jaxquant.evaluation.text import CALIB_TEXT
from jaxquant.models import LoadedModel, load_model
from jaxquant.models.generate import Sampling, generate
from jaxquant.recipes.io import resolve_recipe
from jaxquant.recipes.recipe import Recipe
from jaxquant.tree_paths import flatten

DEFAULT_PROMPTS = (
    "Emma Woodhouse, handsome, clever, and rich,",
    "The capital of France is",
)


@dataclasses.dataclass
class Loaded:
    """A model and the parameters to run: float (recipe None) or quantized."""

    name: str
    model: LoadedModel
    params: Any
    recipe: Recipe | None
    quantize_seconds: float = 0.0
    calibration: dict = dataclasses.field(default_factory=dict)


@functools.lru_cache(maxsize=2)
def cached_model(name: str) -> LoadedModel:
    """load_model, kept for the process: models are immutable, decoding a GGUF takes seconds."""
    return load_model(name)


def is_checkpoint(path: str) -> bool:
    """A saved or imported checkpoint directory (Orbax, compressed-tensors, GPTQ, AWQ)."""
    p = Path(path)
    return p.is_dir() and ((p / checkpoint.orbax_io.MANIFEST).is_file()
                           or (p / "config.json").is_file()
                           or (p / "quantize_config.json").is_file())


def logits_fn(model: LoadedModel, kv: Any = None):
    """(params, tokens) -> logits, with quantized layers intercepted; with a KV cache format
    `kv`, K/V go through a fresh cache of that format (attention reads the stored values)."""

    def fn(params: Any, tokens: Any) -> Any:
        cache = None if kv is None else model.module.init_cache(*tokens.shape, kv=kv)
        with jq.intercept():
            return model.module.apply(params, tokens, cache=cache)[0]

    return fn


def step_fn(model: LoadedModel):
    """(params, tokens, cache) -> (logits, cache), quantized layers intercepted; one function per
    model module, so generate's compiled prefill and step are reused across prompts."""
    return _intercepted_step(model.module)


@functools.lru_cache(maxsize=8)
def _intercepted_step(module: Any):
    def fn(params: Any, tokens: Any, cache: Any) -> Any:
        with jq.intercept():
            return module.apply(params, tokens, cache=cache)

    return fn


def with_overrides(recipe: Recipe, method: str | None = None, bits: int | None = None) -> Recipe:
    """The recipe with every rule's method replaced (--method) and/or its integer weight format
    set to `bits` bits, keeping signedness and grid (--bits 3: int4 -> int3,
    int4_full -> int3_full)."""
    rules = []
    for r in recipe.rules:
        w = r.weight
        if bits is not None:
            m = re.fullmatch(r"(u?int)\d+(_full)?", w.format)
            if m is None:
                raise JaxquantError(f"--bits applies to integer formats, not {w.format}")
            w = dataclasses.replace(w, format=f"{m.group(1)}{bits}{m.group(2) or ''}")
        rules.append(dataclasses.replace(r, weight=w, method=method or r.method))
    suffix = (f"-{method}" if method else "") + (f"-int{bits}" if bits else "")
    return Recipe(tuple(rules), ignore=recipe.ignore, name=recipe.name + suffix,
                  kv_cache=recipe.kv_cache)


def calibration_windows(model: LoadedModel, *, text: str | None, tokens: int, seq_len: int
                        ) -> tuple[Any, str]:
    """[n, seq_len] token windows of the calibration text (bundled Persuasion slice by default,
    never the evaluation text) and its label."""
    body, label = read_text(text, default=CALIB_TEXT)
    return windows(model.tokenizer.encode(body), seq_len, tokens), label


def quantize_model(model: LoadedModel, name: str, recipe: Recipe, *, calib_text: str | None = None,
                   calib_tokens: int = 16384, seq_len: int = 512, progress: bool = True
                   ) -> tuple[Any, float, dict]:
    """Quantize `model` with `recipe` -> (params, seconds, calibration info). GPTQ/AWQ/SmoothQuant
    rules run block-sequentially on calibration text; static activation scales are calibrated on
    it. Errors if the recipe targets no layer of this model."""
    from jaxquant.methods.sequential import CALIBRATED, quantize_calibrated

    types = jq.linen_module_types(model.module, jnp.zeros((1, 8), jnp.int32))
    calib: dict = {}
    start = time.perf_counter()
    if any(r.method in CALIBRATED for r in recipe.rules):
        wins, label = calibration_windows(model, text=calib_text, tokens=calib_tokens,
                                          seq_len=seq_len)
        qparams, report = quantize_calibrated(model.module, model.params, recipe, wins,
                                              progress=progress)
        calib = {"text": label, "tokens": int(wins.size), "layers": report.layers}
    else:
        qparams = jq.quantize(model.params, recipe, module_types=types)
    jax.block_until_ready(qparams)
    if not any(isinstance(leaf, jq.QArray) for _, leaf in flatten(qparams)[0]):
        raise JaxquantError(f"recipe {recipe.name!r} targets no layer of model {name!r}; "
                            "check its targets against the parameter paths (jaxquant.summary)")
    if any(r.activation is not None and not r.activation.dynamic for r in recipe.rules):
        wins, label = calibration_windows(model, text=calib_text, tokens=min(calib_tokens, 4096),
                                          seq_len=seq_len)
        run = lambda p, b: model.module.apply(p, jnp.asarray(b)[None])  # noqa: E731
        qparams = calibrate_activations(run, qparams, list(wins))
        calib.setdefault("text", label)
        calib["activation_tokens"] = int(wins.size)
    return qparams, time.perf_counter() - start, calib


def load(model_arg: str, recipe_arg: str | None, *, method: str | None = None,
         bits: int | None = None, calib_text: str | None = None, calib_tokens: int = 16384
         ) -> Loaded:
    """A model name / GGUF path (quantized with recipe_arg if given) or a saved checkpoint."""
    if is_checkpoint(model_arg):
        from jaxquant.interop import formats

        qparams, recipe, base = formats.load(model_arg)
        if not base:
            raise JaxquantError(f"{model_arg}: checkpoint does not name its base model")
        checkpoint.check_tree(qparams, cached_model(base).params, model_arg)
        qparams = jax.tree_util.tree_map(jnp.asarray, qparams)
        if recipe_arg is not None or method or bits:
            raise JaxquantError("--recipe/--method/--bits cannot be combined with a quantized checkpoint "
                                f"({model_arg} was saved with recipe {recipe.name!r})")
        return Loaded(base, cached_model(base), qparams, recipe)
    model = cached_model(model_arg)
    if recipe_arg is None:
        return Loaded(model_arg, model, model.params, None)
    recipe = with_overrides(resolve_recipe(recipe_arg), method, bits)
    qparams, seconds, calib = quantize_model(model, model_arg, recipe, calib_text=calib_text,
                                             calib_tokens=calib_tokens)
    return Loaded(model_arg, model, qparams, recipe, seconds, calib)


def param_bytes(params: Any) -> int:
    total = 0
    for _, leaf in flatten(params)[0]:
        if isinstance(leaf, jq.QArray):
            total += leaf.nbytes
        elif hasattr(leaf, "nbytes"):
            total += int(leaf.nbytes)
    return total


def evaluate(model: LoadedModel, params: Any, tokens: list[int], *, seq_len: int,
             batch_size: int, max_tokens: int | None, desc: str, kv: Any = None
             ) -> PerplexityResult:
    return perplexity(logits_fn(model, kv), params, tokens, seq_len=seq_len,
                      batch_size=batch_size, max_tokens=max_tokens, desc=desc)


def complete(model: LoadedModel, params: Any, prompt: str, *, max_new_tokens: int,
             sampling: Sampling = Sampling(), seed: int = 0, kv: Any = None) -> str:
    ids = model.tokenizer.encode(prompt)
    out = generate(step_fn(model), params, functools.partial(model.module.init_cache, kv=kv), ids,
                   max_new_tokens=max_new_tokens, sampling=sampling,
                   eos_id=model.tokenizer.eos_id, seed=seed)
    return model.tokenizer.decode(out)
