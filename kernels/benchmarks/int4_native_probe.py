"""Probe: can XLA fuse group-wise int4 dequantization into its own GEMM when the codes are
stored as jnp.int4 (s4) instead of uint8 nibble pairs? Times, per shape, in one run:

  pallas      the W4A16 Pallas kernel (jaxquant.kernels.w4a16, canonical uint8 layout)
  bf16        XLA's bf16 dot
  s4-w        s4 [K, N] -> bf16, times the group scales broadcast over K, then the dot
  s4-out      s4 [K, N] as [G, g, N]: one batched dot per group, partials scaled and summed
  s4-chan     s4 with per-output-channel scales applied to the result (XLA's best case)

    python -m jaxquant.kernels.benchmarks.int4_native_probe [--shapes M,K,N;...]

Each variant is checked against a float64 reference first; prints a table and writes
<date>-<device>-int4-probe.json under kernels/benchmarks/results (or $OUT).
"""

from __future__ import annotations

import argparse
import datetime
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxquant.kernels.benchmarks import harness as H
from jaxquant.kernels.w4a16.api import w4a16_matmul
from jaxquant.kernels.w4a16.bench import floor_us, host_dequant64, make_weights

G = 128
DEFAULT = "1,4096,14336;1,14336,4096;1,4096,6144;1,8192,8192;16,8192,8192;128,4096,14336"


def to_s4(w, K: int) -> jax.Array:
    """Canonical uint8 nibble pairs [K/2, N] -> int4 [K, N] (two's complement codes)."""
    q = w.qvalue
    lo = (q & 0xF).astype(jnp.int8)
    hi = (q >> 4).astype(jnp.int8)
    codes = jnp.stack([lo, hi], axis=1).reshape(K, q.shape[1])
    return jnp.where(codes >= 8, codes - 16, codes).astype(jnp.int4)


def s4_weight_scaled(x, w):
    q, s = w
    K, N = q.shape
    wd = (q.astype(jnp.bfloat16).reshape(K // G, G, N) * s[:, None, :]).reshape(K, N)
    return jnp.dot(x, wd, preferred_element_type=jnp.float32).astype(jnp.bfloat16)


def s4_out_scaled(x, w):
    q, s = w
    K, N = q.shape
    xg = x.reshape(x.shape[0], K // G, G)
    part = jnp.einsum("mgk,gkn->gmn", xg, q.astype(jnp.bfloat16).reshape(K // G, G, N),
                      preferred_element_type=jnp.float32)
    return jnp.sum(part * s[:, None, :].astype(jnp.float32), axis=0).astype(jnp.bfloat16)


def s4_channel(x, w):
    q, s = w
    out = jnp.dot(x, q.astype(jnp.bfloat16), preferred_element_type=jnp.float32)
    return (out * s[0].astype(jnp.float32)).astype(jnp.bfloat16)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default=DEFAULT)
    args = ap.parse_args(argv)
    dev = jax.devices()[0]
    bw = H.copy_bandwidth()
    rows: list[dict] = [dict(kernel="_meta", device=dev.device_kind, jax=jax.__version__,
                             copy_TBps=bw / 1e12, group=G)]
    print(f"device {dev.device_kind}, jax {jax.__version__}, copy {bw / 1e12:.2f} TB/s")
    print("M | K | N | variant | us | x bf16 | % floor | rel err")
    for spec in args.shapes.split(";"):
        M, K, N = (int(v) for v in spec.split(","))
        R = H.pick_r(K * N * 2)
        keys = jax.random.split(jax.random.key(K + N), R)
        ws = [make_weights(k, K, N, G) for k in keys]
        s4 = [(to_s4(w, K), w.scale) for w in ws]
        wb = [jax.random.normal(k, (K, N), jnp.bfloat16) for k in keys]
        x = jax.random.normal(jax.random.key(M), (M, K), jnp.bfloat16)
        ref = np.asarray(x.astype(jnp.float32), np.float64) @ host_dequant64(ws[0], K, G)
        ref_ch = np.asarray(x.astype(jnp.float32), np.float64) @ (
            np.asarray(s4[0][0].astype(jnp.float32), np.float64)
            * np.asarray(ws[0].scale[0].astype(jnp.float32), np.float64))
        variants = [
            ("pallas", lambda x, w: w4a16_matmul(x, w, group_size=G), ws, ref),
            ("bf16", lambda x, w: jnp.dot(x, w), wb, None),
            ("s4-w", s4_weight_scaled, s4, ref),
            ("s4-out", s4_out_scaled, s4, ref),
            ("s4-chan", s4_channel, s4, ref_ch),
        ]
        base = None
        for name, fn, wl, r in variants:
            try:
                us, _, out = H.time_fn(fn, x, wl)
            except Exception as e:  # a variant XLA cannot compile is reported, not fatal
                print(f"{M} | {K} | {N} | {name} | failed: {type(e).__name__}: {str(e)[:120]}")
                continue
            err = float("nan") if r is None else H.rel_err(np.asarray(out.astype(jnp.float32)), r)
            base = us if name == "bf16" else base
            fl = floor_us(M, K, N, G, bw)
            row = dict(kernel=name, M=M, K=K, N=N, group=G, us=us, floor_us=fl, max_rel_err=err)
            rows.append(row)
            vs = (base / us) if base else float("nan")
            print(f"{M} | {K} | {N} | {name} | {us:.1f} | {vs:.2f} | {100 * fl / us:.0f} | {err:.1e}",
                  flush=True)
        for row in rows[-len(variants):]:
            row["xla_bf16_us"] = base
    root = os.environ.get("OUT") or os.path.join(os.path.dirname(__file__), "results")
    name = f"{datetime.date.today().isoformat()}-{str(dev.device_kind).replace(' ', '_')}"
    H.write_json(os.path.join(root, f"{name}-int4-probe.json"), rows)
    return rows


if __name__ == "__main__":
    main()
