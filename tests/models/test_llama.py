"""The Linen Llama against an independent float64 NumPy forward; KV-cache decoding against the
full forward; every matmul reachable by nn.intercept_methods."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxquant.errors import JaxquantError
from jaxquant.models import kv_cache
from jaxquant.models.llama import Llama, LlamaConfig

REL_TOL = 1e-3  # relative Frobenius error, f32 JAX vs f64 NumPy (full f32 matmuls: conftest.py)


# ----------------------------------------------------------------------------------------------
# NumPy float64 reference, written from the HF Llama definition (not from jaxquant's code):
# RoPE as a complex rotation of the pairs (x_i, x_{i + d/2}), attention head by head.


def np_rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * w


def np_rope(x: np.ndarray, theta: float) -> np.ndarray:
    """x [T, H, D]; position t rotates pair (x_i, x_{i+D/2}) by t * theta^(-2i/D)."""
    t, _, d = x.shape
    freq = theta ** (-np.arange(d // 2) * 2.0 / d)
    z = (x[..., : d // 2] + 1j * x[..., d // 2:]) * np.exp(1j * np.outer(np.arange(t), freq))[:, None]
    return np.concatenate([z.real, z.imag], axis=-1)


def np_forward(p: dict, cfg: LlamaConfig, tokens: np.ndarray) -> np.ndarray:
    """tokens [T] -> logits [T, V], float64."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), p["params"])
    x = p["embed"]["embedding"][tokens]
    t, hd = len(tokens), cfg.head_dim
    group = cfg.n_heads // cfg.n_kv_heads
    causal = np.tril(np.ones((t, t), bool))
    for i in range(cfg.n_layers):
        lp = p[f"layers_{i}"]
        a = lp["attn"]
        h = np_rms_norm(x, lp["input_norm"]["scale"], cfg.rms_eps)
        q = np_rope((h @ a["q_proj"]["kernel"]).reshape(t, cfg.n_heads, hd), cfg.rope_theta)
        k = np_rope((h @ a["k_proj"]["kernel"]).reshape(t, cfg.n_kv_heads, hd), cfg.rope_theta)
        v = (h @ a["v_proj"]["kernel"]).reshape(t, cfg.n_kv_heads, hd)
        heads = []
        for head in range(cfg.n_heads):
            kv = head // group
            s = q[:, head] @ k[:, kv].T / np.sqrt(hd)
            s = np.where(causal, s, -np.inf)
            w = np.exp(s - s.max(-1, keepdims=True))
            heads.append((w / w.sum(-1, keepdims=True)) @ v[:, kv])
        x = x + np.concatenate(heads, -1) @ a["o_proj"]["kernel"]
        m = lp["mlp"]
        h = np_rms_norm(x, lp["post_attn_norm"]["scale"], cfg.rms_eps)
        g = h @ m["gate_proj"]["kernel"]
        x = x + (g / (1 + np.exp(-g)) * (h @ m["up_proj"]["kernel"])) @ m["down_proj"]["kernel"]
    x = np_rms_norm(x, p["final_norm"]["scale"], cfg.rms_eps)
    head = p["embed"]["embedding"].T if cfg.tie_embeddings else p["lm_head"]["kernel"]
    return x @ head


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ----------------------------------------------------------------------------------------------

TINY = {
    "tied_gqa": LlamaConfig(97, 48, 2, n_heads=6, n_kv_heads=2, head_dim=8, ffn_dim=80,
                            rope_theta=500.0, tie_embeddings=True),
    # head_dim * n_heads != d_model, multi-query
    "untied_mqa": LlamaConfig(97, 48, 3, n_heads=4, n_kv_heads=1, head_dim=16, ffn_dim=64,
                              rope_theta=10000.0, rms_eps=1e-6, tie_embeddings=False),
}


def tiny_model(cfg: LlamaConfig, seed: int = 0):
    """Llama with random params; norm scales away from 1 so they are exercised."""
    module = Llama(cfg)
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    leaves, treedef = jax.tree_util.tree_flatten(shapes)
    rng = np.random.default_rng(seed)
    leaves = [jnp.asarray(0.3 * rng.normal(size=x.shape) + (1.0 if x.ndim == 1 else 0.0),
                          jnp.float32) for x in leaves]
    return module, jax.tree_util.tree_unflatten(treedef, leaves)


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_matches_numpy(name):
    cfg = TINY[name]
    module, params = tiny_model(cfg)
    tokens = np.array([[3, 50, 7, 96, 0, 12, 12, 41, 8, 77, 5]], np.int32)
    logits, cache = jax.jit(module.apply)(params, tokens)
    assert cache is None and logits.dtype == jnp.float32 and logits.shape == (1, 11, cfg.vocab_size)
    assert rel_err(logits[0], np_forward(params, cfg, tokens[0])) < REL_TOL


def test_param_paths():
    module, params = tiny_model(TINY["untied_mqa"])
    paths = {"/".join(k.key for k in path)
             for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    layer = {"attn/q_proj/kernel", "attn/k_proj/kernel", "attn/v_proj/kernel",
             "attn/o_proj/kernel", "mlp/gate_proj/kernel", "mlp/up_proj/kernel",
             "mlp/down_proj/kernel", "input_norm/scale", "post_attn_norm/scale"}
    expected = {"params/embed/embedding", "params/final_norm/scale", "params/lm_head/kernel"}
    expected |= {f"params/layers_{i}/{s}" for i in range(3) for s in layer}
    assert paths == expected
    assert params["params"]["layers_0"]["attn"]["k_proj"]["kernel"].shape == (48, 16)  # (in, out)


@pytest.mark.parametrize("tied", [True, False])
def test_every_matmul_is_interceptable(tied):
    cfg = TINY["tied_gqa" if tied else "untied_mqa"]
    module, params = tiny_model(cfg)
    seen = []

    def spy(next_fun, args, kwargs, context):
        if isinstance(context.module, (nn.Dense, nn.Embed)):
            seen.append((context.module.name, context.method_name))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(spy):
        module.apply(params, jnp.zeros((1, 3), jnp.int32))
    dense = [n for n, m in seen if m == "__call__" and n != "embed"]
    assert len(dense) == 7 * cfg.n_layers + (0 if tied else 1)
    assert ("embed", "attend" if tied else "__call__") in seen


@pytest.mark.parametrize("name", sorted(TINY))
def test_kv_cache_decoding_matches_full_forward(name):
    cfg = TINY[name]
    module, params = tiny_model(cfg, seed=3)
    tokens = jnp.array([[5, 9, 1, 33, 70, 2, 8, 8, 60], [1, 2, 3, 4, 5, 6, 7, 8, 9]], jnp.int32)
    full, _ = module.apply(params, tokens)
    step = jax.jit(lambda p, t, c: module.apply(p, t, cache=c))
    cache = module.init_cache(batch=2, max_len=16)
    parts = []
    logits, cache = step(params, tokens[:, :5], cache)  # prefill
    parts.append(logits)
    for i in range(5, 9):
        logits, cache = step(params, tokens[:, i:i + 1], cache)
        parts.append(logits)
    assert int(cache.length) == 9
    assert rel_err(jnp.concatenate(parts, axis=1), full) < 1e-5


def test_kv_cache_overflow_error():
    cfg = TINY["tied_gqa"]
    module, params = tiny_model(cfg)
    cache = kv_cache.init_cache(cfg, 1, 4)
    with pytest.raises(ValueError, match="KV cache holds 4 positions"):
        module.apply(params, jnp.zeros((1, 5), jnp.int32), cache=cache)


def test_bf16_compute_close_to_f32():
    cfg = TINY["tied_gqa"]
    module, params = tiny_model(cfg)
    bf16 = Llama(LlamaConfig(**{**cfg.__dict__, "dtype": jnp.bfloat16}))
    tokens = jnp.array([[3, 50, 7, 96, 0, 12]], jnp.int32)
    lo, _ = bf16.apply(params, tokens)
    hi, _ = module.apply(params, tokens)
    assert lo.dtype == jnp.float32 and rel_err(lo, hi) < 0.05


# ---------------------------------------------------------------------------------------- real


def test_smollm2_matches_numpy(smollm2):
    m = smollm2
    ids = m.tokenizer.encode("Emma Woodhouse, handsome, clever, and rich, with a comfortable")
    logits, _ = jax.jit(m.module.apply)(m.params, jnp.asarray([ids], jnp.int32))
    ref = np_forward(m.params, m.config, np.asarray(ids))
    err = rel_err(logits[0], ref)
    print(f"SmolLM2-135M, {len(ids)} tokens: relative error vs float64 NumPy {err:.2e}")
    assert err < REL_TOL
    assert np.array_equal(np.argmax(logits[0], -1), np.argmax(ref, -1))


def test_smollm2_tree_matches_module_init(smollm2):
    m = smollm2
    shapes = jax.eval_shape(m.module.init, jax.random.key(0), jnp.zeros((1, 2), jnp.int32))
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(m.params)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(
        lambda s, p: s.shape == p.shape and p.dtype == jnp.float32, shapes, m.params))


def test_fused_projections_match_separate_layers_float_and_w4a16():
    """qkv_proj / gate_up_proj compute the same model; int4 g128 codes are the same too."""
    import dataclasses

    import jaxquant as jq
    from jaxquant.models.llama import fuse_projections

    cfg = LlamaConfig(vocab_size=64, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2,
                      head_dim=32, ffn_dim=256)
    fcfg = dataclasses.replace(cfg, fused_projections=True)
    tok = jnp.arange(12, dtype=jnp.int32)[None] % 64
    params = Llama(cfg).init(jax.random.key(3), tok)
    fused = fuse_projections(params)
    assert set(fused["params"]["layers_0"]["attn"]) == {"qkv_proj", "o_proj"}
    assert set(fused["params"]["layers_1"]["mlp"]) == {"gate_up_proj", "down_proj"}
    ref = np.asarray(Llama(cfg).apply(params, tok)[0])
    np.testing.assert_allclose(np.asarray(Llama(fcfg).apply(fused, tok)[0]), ref, rtol=1e-5,
                               atol=1e-5)
    q, qf = jq.quantize(params, "w4a16"), jq.quantize(fused, "w4a16")
    with jq.intercept():
        a = np.asarray(Llama(cfg).apply(q, tok)[0])
        b = np.asarray(Llama(fcfg).apply(qf, tok)[0])
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    with pytest.raises(JaxquantError, match="already fused"):
        fuse_projections(fused)
    with pytest.raises(JaxquantError, match="fuse before quantizing"):
        fuse_projections(q)
