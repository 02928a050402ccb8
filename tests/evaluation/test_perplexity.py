"""Perplexity: exact on known logits, batching-invariant, clear too-short error, and sane on
SmolLM2-135M over the bundled Austen text."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxquant.errors import JaxquantError
from jaxquant.evaluation import evaluation_text, perplexity, windows
from jaxquant.models.llama import Llama, LlamaConfig

V = 50


def uniform(params, tokens):
    return jnp.zeros(tokens.shape + (V,))


def test_uniform_logits_give_vocab_size():
    ids = np.arange(1000) % V
    r = perplexity(uniform, None, ids, seq_len=64, batch_size=4, progress=False)
    assert r.n_tokens == (1000 // 64) * 63
    assert math.isclose(r.ppl, V, rel_tol=1e-5) and math.isclose(r.nll, math.log(V), rel_tol=1e-6)
    assert r.seconds > 0 and r.tokens_per_second > 0


@pytest.fixture(scope="module")
def tiny():
    cfg = LlamaConfig(V, 16, 1, n_heads=2, n_kv_heads=1, head_dim=8, ffn_dim=24)
    module = Llama(cfg)
    params = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    return (lambda p, t: module.apply(p, t)[0]), params


def test_matches_direct_computation_and_ignores_batching(tiny):
    apply_fn, params = tiny
    ids = np.random.default_rng(0).integers(0, V, 5 * 32 + 7)  # 5 windows + a dropped tail
    wins = windows(ids, 32)
    assert wins.shape == (5, 32)
    logp = jax.nn.log_softmax(np.asarray(apply_fn(params, jnp.asarray(wins)), np.float64), -1)
    nll = -np.mean(np.take_along_axis(np.asarray(logp)[:, :-1], wins[:, 1:, None], -1))
    results = [perplexity(apply_fn, params, ids, seq_len=32, batch_size=b, progress=False)
               for b in (1, 2, 8)]  # 2 pads the last batch; 8 > windows
    for r in results:
        assert r.n_tokens == 5 * 31
        assert math.isclose(r.nll, nll, rel_tol=1e-5)
    r = perplexity(apply_fn, params, ids, seq_len=32, batch_size=2, max_tokens=70, progress=False)
    assert r.n_tokens == 2 * 31


def test_too_short_text():
    with pytest.raises(JaxquantError, match=r"seq_len=512 needs at least 512 tokens, the text "
                                            r"has 300"):
        perplexity(uniform, None, list(range(300)), seq_len=512, batch_size=1)


def test_smollm2_on_bundled_austen(smollm2):
    ids = smollm2.tokenizer.encode(evaluation_text())
    assert len(ids) >= 60_000
    r = perplexity(smollm2.logits, smollm2.params, ids, seq_len=512, batch_size=2,
                   max_tokens=1024, progress=False)
    print(f"SmolLM2-135M (Q4_1 GGUF) on Emma, seq_len 512, {r.n_tokens} tokens: ppl {r.ppl:.2f}, "
          f"{r.tokens_per_second:.0f} tokens/s")
    assert r.n_tokens == 2 * 511
    assert 10 < r.ppl < 50  # measured ~33 (~33.3 over the whole 64k-token slice)
