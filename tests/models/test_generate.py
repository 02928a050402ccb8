"""KV-cache generation: greedy equals argmax of the full forward, determinism, sampling, eos."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxquant.errors import JaxquantError
from jaxquant.models.generate import Sampling, generate, generate_text, module_apply, sample
from jaxquant.models.llama import Llama, LlamaConfig

CFG = LlamaConfig(61, 32, 2, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=48, max_seq_len=128)


@pytest.fixture(scope="module")
def tiny():
    module = Llama(CFG)
    params = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    params = jax.tree_util.tree_map(lambda x: x * 3 if x.ndim == 2 else x, params)  # peaky
    return module, params


def run(tiny, prompt, n, **kw):
    module, params = tiny
    return generate(module_apply(module), params, module.init_cache, prompt,
                    max_new_tokens=n, **kw)


def test_greedy_matches_full_forward_argmax(tiny):
    module, params = tiny
    prompt = [5, 17, 3, 40, 22]
    out = run(tiny, prompt, 12)
    assert len(out) == 12
    # no cache, teacher-forced: each generated token is the argmax after its prefix
    logits, _ = jax.jit(module.apply)(params, jnp.asarray([prompt + out]))
    assert list(np.argmax(logits[0, len(prompt) - 1:-1], -1)) == out


def test_greedy_is_deterministic(tiny):
    a = run(tiny, [1, 2, 3], 10)
    assert a == run(tiny, [1, 2, 3], 10)
    assert run(tiny, [1, 2, 3, 4, 5, 6, 7], 5) == run(tiny, [1, 2, 3, 4, 5, 6, 7], 5)


def test_sampling_reproducible_per_key(tiny):
    s = Sampling(temperature=1.5, top_p=0.95)
    a = run(tiny, [4, 4, 9], 16, sampling=s, key=jax.random.key(1))
    assert a == run(tiny, [4, 4, 9], 16, sampling=s, key=jax.random.key(1))
    others = [run(tiny, [4, 4, 9], 16, sampling=s, key=jax.random.key(k)) for k in (2, 3)]
    assert any(o != a for o in others)
    # a vanishing nucleus keeps only the most likely token: greedy
    greedy = run(tiny, [4, 4, 9], 8)
    assert run(tiny, [4, 4, 9], 8, sampling=Sampling(1.0, 1e-6), seed=7) == greedy


def test_stops_at_eos(tiny):
    first = run(tiny, [8, 9], 1)[0]
    assert run(tiny, [8, 9], 20, eos_id=first) == [first]


def test_top_p_keeps_the_smallest_nucleus():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    keys = jax.random.split(jax.random.key(0), 2000)
    draw = jax.vmap(lambda k: sample(logits, k, jnp.float32(1.0), jnp.float32(0.7))[0])(keys)
    counts = np.bincount(np.asarray(draw), minlength=4)
    assert counts[2] == counts[3] == 0  # 0.5 + 0.3 >= 0.7: tokens 0 and 1 only
    assert 0.55 < counts[0] / 2000 < 0.70  # renormalised 0.5 / 0.8


def test_argument_errors(tiny):
    with pytest.raises(JaxquantError, match="prompt is empty"):
        run(tiny, [], 4)
    with pytest.raises(JaxquantError, match="top_p"):
        Sampling(1.0, 0.0)
    module, params = tiny
    with pytest.raises(JaxquantError, match="context length 128"):
        generate(module_apply(module), params, module.init_cache, [1] * 100,
                 max_new_tokens=40, max_len=128)


def test_smollm2_chat_greedy(smollm2):
    """Greedy chat answer: deterministic, stops at eos (<|im_end|>), and a teacher-forced full
    forward (no cache) picks the same tokens."""
    prompt = ("<|im_start|>user\nWhat is the capital of France? Answer in one word."
              "<|im_end|>\n<|im_start|>assistant\n")
    a = generate_text(smollm2, prompt, max_new_tokens=16)
    assert a.stopped_at_eos and a.tokens[-1] == smollm2.tokenizer.eos_id
    assert "Paris" in a.text and "<|im_end|>" not in a.text, a.text
    assert generate_text(smollm2, prompt, max_new_tokens=16) == a
    ids = smollm2.tokenizer.encode(prompt)
    logits, _ = jax.jit(smollm2.module.apply)(smollm2.params, jnp.asarray([ids + a.tokens]))
    assert list(np.argmax(logits[0, len(ids) - 1:-1], -1)) == a.tokens
