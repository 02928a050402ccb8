"""Grouped-query attention (jaxquant.models.attention) against a float64 numpy reference."""

import numpy as np
import pytest
import jax.numpy as jnp

from jaxquant.models import attention


def reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, q_slot: np.ndarray) -> np.ndarray:
    """float64 q [B, T, Hkv, G, D], k/v [B, S, Hkv, D]; query t sees keys s <= q_slot[t]."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    scores = np.einsum("btkgd,bskd->bkgts", q, k) / np.sqrt(q.shape[-1])
    allowed = np.arange(k.shape[1])[None, :] <= q_slot[:, None]
    scores = np.where(allowed, scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bkgts,bskd->btkgd", p, v)


def _qkv(rng, b, t, s, hkv, g, d, dtype=np.float32):
    return (rng.standard_normal((b, t, hkv, g, d)).astype(dtype),
            rng.standard_normal((b, s, hkv, d)).astype(dtype),
            rng.standard_normal((b, s, hkv, d)).astype(dtype))


@pytest.mark.parametrize("t", [1, 7, 128, 300])  # one chunk, ragged last chunk
def test_causal_matches_reference(t):
    rng = np.random.default_rng(t)
    q, k, v = _qkv(rng, 2, t, t, 2, 3, 16)
    out = attention.causal_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))
    assert out.dtype == jnp.float32 and out.shape == q.shape
    np.testing.assert_allclose(np.asarray(out), reference(q, k, v, np.arange(t)),
                               rtol=1e-5, atol=1e-5)


def test_causal_long_sequence_uses_bounded_chunks(monkeypatch):
    monkeypatch.setattr(attention, "CHUNK", 8)
    monkeypatch.setattr(attention, "MAX_CHUNKS", 3)  # 50 queries -> 3 chunks of 17
    rng = np.random.default_rng(1)
    q, k, v = _qkv(rng, 1, 50, 50, 1, 2, 8)
    out = attention.causal_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))
    np.testing.assert_allclose(np.asarray(out), reference(q, k, v, np.arange(50)),
                               rtol=1e-5, atol=1e-5)


def test_causal_huge_scores_and_bf16_inputs():
    rng = np.random.default_rng(2)
    q, k, v = _qkv(rng, 1, 140, 140, 1, 2, 8)
    q[0, 5] *= 1e3  # saturated softmax rows stay finite
    qb, kb, vb = (jnp.asarray(a, jnp.bfloat16) for a in (q, k, v))
    out = np.asarray(attention.causal_attention(qb, kb, vb))
    assert np.isfinite(out).all()
    ref = reference(*(np.asarray(a.astype(jnp.float32)) for a in (qb, kb, vb)), np.arange(140))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_masked_by_slot_matches_reference():
    rng = np.random.default_rng(3)
    q, k, v = _qkv(rng, 2, 5, 12, 2, 2, 8)  # 5 new queries after 4 cached slots, capacity 12
    slots = 4 + np.arange(5, dtype=np.int32)
    out = attention.masked_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                                     jnp.asarray(slots))
    np.testing.assert_allclose(np.asarray(out), reference(q, k, v, slots), rtol=1e-5, atol=1e-5)
