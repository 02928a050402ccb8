"""Decode attention over a (quantized) KV cache as one Pallas-Triton kernel (flash decoding).

Grid (batch, KV head, split). A program owns the GP >= 16 query rows of one KV head's group
(GQA; rows past the group are zero padding, so the tensor-core dots have M >= 16) and one
contiguous split of the cache, and walks it in blocks of block_s positions up to the sequence's
length: it loads the codes of a block, turns them into the dot dtype in registers (int8/fp8: a
cast; int4: two nibbles of one byte, for the two halves of the head), and computes
  scores = sum over channel groups (q_group . codes_group^T) * k_scale_group     (exact codes)
then an online softmax in float32 and
  acc_group += (p * v_scale_group) . v_codes_group                               (f32 accumulation)
so no dequantized copy of the cache is ever written. It writes unnormalized partial outputs
with their running max and sum; `combine` merges the splits.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from jaxquant.kernels.decode_attention.config import DecodeAttentionConfig, split_len
from jaxquant.kernels.decode_attention.layouts import KVCacheSpec

NEG = -0.7 * float(jnp.finfo(jnp.float32).max)  # masked score: exp(NEG - m) == 0, never NaN


def segments(spec: KVCacheSpec, head_dim: int) -> list[tuple[int, int, str | None, int]]:
    """(code column, first channel, nibble, scale group) of every C-wide piece of a head row,
    C = segment_width(spec, head_dim): 8-bit/float codes are read in C-wide column chunks; an
    int4 byte chunk holds two pieces (its low nibbles: channels j..; high: channels D/2 + j..)."""
    c = segment_width(spec, head_dim)
    gs = head_dim // spec.groups(head_dim) if spec.quantized else head_dim
    if spec.format == "int4":
        half = head_dim // 2
        out = []
        for col in range(0, half, c):
            out += [(col, col, "lo", col // gs), (col, half + col, "hi", (half + col) // gs)]
        return out
    return [(col, col, None, col // gs) for col in range(0, head_dim, c)]


def segment_width(spec: KVCacheSpec, head_dim: int) -> int:
    """Channels per piece: the group size, capped at the stored row width."""
    gs = head_dim // spec.groups(head_dim) if spec.quantized else head_dim
    return min(gs, spec.packed_dim(head_dim))


def _codes_to(x: Any, nibble: str | None, dtype: Any) -> Any:
    if nibble is None:
        return x.astype(dtype)
    b = x.astype(jnp.int32)
    v = (b & 15) if nibble == "lo" else (b >> 4) & 15
    return jnp.where(v >= 8, v - 16, v).astype(dtype)


def _kernel(*refs, spec: KVCacheSpec, layer: int | None, D: int, GP: int, BS: int, SL: int,
            sm_scale: float, dot_dtype: Any):
    if spec.quantized:
        q_ref, k_ref, ks_ref, v_ref, vs_ref, len_ref, o_ref, m_ref, l_ref = refs
    else:
        q_ref, k_ref, v_ref, len_ref, o_ref, m_ref, l_ref = refs
        ks_ref = vs_ref = None
    b, h, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    # static indices as int32 scalars (plain ints in a ref index break interpret mode)
    lead = (b, h) if layer is None else (jnp.int32(layer), b, h)
    segs = segments(spec, D)
    C = segment_width(spec, D)
    groups = sorted({g for *_, g in segs})
    precision = lax.Precision.HIGHEST if jnp.dtype(dot_dtype) == jnp.float32 else None
    qs = [plgpu.load(q_ref.at[b, h, pl.ds(0, GP), pl.ds(ch, C)]).astype(dot_dtype)
          for _, ch, _, _ in segs]
    zero = jnp.zeros((), k_ref.dtype)

    start = j * SL
    end = jnp.minimum(start + SL, len_ref[b])
    n_blocks = jnp.maximum(end - start + BS - 1, 0) // BS

    def body(i, carry):
        m, l, accs = carry
        s0 = start + i * BS
        valid = (s0 + lax.broadcasted_iota(jnp.int32, (BS,), 0)) < end
        tile_mask = lax.broadcast_in_dim(valid, (BS, C), (0,))

        def scales(ref):
            return {g: plgpu.load(ref.at[(*lead, jnp.int32(g), pl.ds(s0, BS))], mask=valid, other=0.0)
                    for g in groups}

        def tiles(ref):
            raw = {col: plgpu.load(ref.at[(*lead, pl.ds(s0, BS), pl.ds(col, C))],
                                   mask=tile_mask, other=zero) for col in {c for c, *_ in segs}}
            return [_codes_to(raw[col], nib, dot_dtype) for col, _, nib, _ in segs]

        ks = scales(ks_ref) if spec.quantized else None
        scores = jnp.zeros((GP, BS), jnp.float32)
        for q, kt, (_, _, _, g) in zip(qs, tiles(k_ref), segs):
            part = lax.dot_general(q, kt, (((1,), (1,)), ((), ())), precision=precision,
                                   preferred_element_type=jnp.float32)
            scores += part * ks[g][None, :] if spec.quantized else part
        scores = jnp.where(valid[None, :], scores * sm_scale, NEG)
        m_new = jnp.maximum(m, jnp.max(scores, axis=1))
        corr = jnp.exp(m - m_new)
        p = jnp.exp(scores - m_new[:, None])
        l_new = l * corr + jnp.sum(p, axis=1)
        vs = scales(vs_ref) if spec.quantized else None
        new = []
        for acc, vt, (_, _, _, g) in zip(accs, tiles(v_ref), segs):
            pv = (p * vs[g][None, :]) if spec.quantized else p
            new.append(acc * corr[:, None] + jnp.dot(pv.astype(dot_dtype), vt, precision=precision,
                                                     preferred_element_type=jnp.float32))
        return m_new, l_new, tuple(new)

    init = (jnp.full((GP,), NEG, jnp.float32), jnp.zeros((GP,), jnp.float32),
            tuple(jnp.zeros((GP, C), jnp.float32) for _ in segs))
    m, l, accs = lax.fori_loop(0, n_blocks, body, init)
    for acc, (_, ch, _, _) in zip(accs, segs):
        plgpu.store(o_ref.at[b, h, j, pl.ds(0, GP), pl.ds(ch, C)], acc)
    plgpu.store(m_ref.at[b, h, j, pl.ds(0, GP)], m)
    plgpu.store(l_ref.at[b, h, j, pl.ds(0, GP)], l)


def decode_attention_triton(q: jax.Array, k: jax.Array, v: jax.Array, lengths: jax.Array,
                            k_scale: jax.Array | None, v_scale: jax.Array | None, *,
                            spec: KVCacheSpec, layer: int | None, sm_scale: float,
                            config: DecodeAttentionConfig, interpret: bool = False) -> jax.Array:
    """q [B, H, D]; k, v codes [(L,) B, Hkv, S, Dp]; scales [(L,) B, Hkv, G, S] float32 (None
    for float caches); lengths int32 [B] -> [B, H, D] in q.dtype (see module docstring)."""
    B, H, D = q.shape
    Hkv, S = k.shape[-3], k.shape[-2]
    group = H // Hkv
    GP = max(16, 1 << (group - 1).bit_length())
    SL = split_len(S, config)
    NS = -(-S // SL)
    dot_dtype = jnp.bfloat16 if q.dtype == jnp.bfloat16 else jnp.float32
    qp = jnp.pad(q.reshape(B, Hkv, group, D), ((0, 0), (0, 0), (0, GP - group), (0, 0)))
    kernel = functools.partial(_kernel, spec=spec, layer=layer, D=D, GP=GP, BS=config.block_s,
                               SL=SL, sm_scale=sm_scale, dot_dtype=dot_dtype)
    args = (qp, k, k_scale, v, v_scale) if spec.quantized else (qp, k, v)
    o, m, l = pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((B, Hkv, NS, GP, D), jnp.float32),
                   jax.ShapeDtypeStruct((B, Hkv, NS, GP), jnp.float32),
                   jax.ShapeDtypeStruct((B, Hkv, NS, GP), jnp.float32)),
        grid=(B, Hkv, NS),
        compiler_params=plgpu.CompilerParams(num_warps=config.num_warps,
                                             num_stages=config.num_stages),
        interpret=interpret,
        name=f"decode_attention_{spec.format}_s{config.block_s}x{NS}",
    )(*args, lengths.astype(jnp.int32))
    out = combine(o[:, :, :, :group], m[:, :, :, :group], l[:, :, :, :group])
    return out.reshape(B, H, D).astype(q.dtype)


def combine(o: jax.Array, m: jax.Array, l: jax.Array) -> jax.Array:
    """Merge split partials: o [B, Hkv, NS, g, D], m, l [B, Hkv, NS, g] -> [B, Hkv, g, D] f32
    (zeros where no split saw a position: an empty cache)."""
    m_all = jnp.max(m, axis=2, keepdims=True)
    w = jnp.exp(m - m_all)
    total = jnp.sum(l * w, axis=2)
    acc = jnp.sum(o * w[..., None], axis=2)
    return acc / jnp.where(total > 0, total, 1.0)[..., None]
