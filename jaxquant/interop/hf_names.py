"""Parameter paths of jaxquant trees <-> HuggingFace tensor names.

The Llama reference model maps to the HF Llama names vLLM and transformers use
(params/layers_3/attn/q_proj/kernel <-> model.layers.3.self_attn.q_proj.weight). Any other tree
maps generically: "a/b/kernel" <-> "a.b.weight" (a Dense kernel, transposed to [out, in]),
"a/b/c" <-> "a.b.c". `is_kernel` says whether the array is transposed on the way.
"""

from __future__ import annotations

import re

_LLAMA = [  # (jaxquant path regex, HF name template, is a kernel)
    (r"params/embed/embedding", "model.embed_tokens.weight", False),
    (r"params/layers_(\d+)/input_norm/scale", "model.layers.{0}.input_layernorm.weight", False),
    (r"params/layers_(\d+)/post_attn_norm/scale",
     "model.layers.{0}.post_attention_layernorm.weight", False),
    (r"params/layers_(\d+)/attn/(q|k|v|o)_proj/kernel", "model.layers.{0}.self_attn.{1}_proj.weight",
     True),
    (r"params/layers_(\d+)/mlp/(gate|up|down)_proj/kernel", "model.layers.{0}.mlp.{1}_proj.weight",
     True),
    (r"params/final_norm/scale", "model.norm.weight", False),
    (r"params/lm_head/kernel", "lm_head.weight", True),
]


def _template_regex(template: str) -> str:
    return re.escape(template).replace(r"\{0\}", r"(\d+)").replace(r"\{1\}", r"(\w+)")


def to_hf(path: str, ndim: int) -> tuple[str, bool]:
    """jaxquant leaf path -> (HF tensor name, is_kernel)."""
    for pattern, template, kernel in _LLAMA:
        m = re.fullmatch(pattern, path)
        if m:
            return template.format(*m.groups()), kernel
    parts = path.split("/")
    if parts[-1] == "kernel" and ndim == 2:
        return ".".join(parts[:-1] + ["weight"]), True
    return ".".join(parts), False


def from_hf(name: str, ndim: int) -> tuple[str, bool]:
    """HF tensor name -> (jaxquant leaf path, is_kernel); inverse of to_hf."""
    for pattern, template, kernel in _LLAMA:
        m = re.fullmatch(_template_regex(template), name)
        if m:
            groups = iter(m.groups())
            return re.sub(r"\([^)]*\)", lambda _: next(groups), pattern), kernel
    parts = name.split(".")
    if parts[-1] == "weight" and ndim == 2:
        return "/".join(parts[:-1] + ["kernel"]), True
    return "/".join(parts), False
