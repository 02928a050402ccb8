"""Exploration sweep (development): many kernel variants on a few shapes, one GPU call.

PYTHONUNBUFFERED=1 python -m jaxquant.kernels.benchmarks.explore [w4|fp8|prefill ...]
Writes $OUT/explore.json; prints one line per variant.
"""

from __future__ import annotations

import os
import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from jaxquant.kernels._common import cdiv, num_sms
from jaxquant.kernels.benchmarks import harness as H
from jaxquant.kernels.fp8_matmul import reference as FR
from jaxquant.kernels.fp8_matmul.config import Fp8Config
from jaxquant.kernels.fp8_matmul.layouts import Fp8Weights
from jaxquant.kernels.fp8_matmul.pallas_triton import fp8_matmul_triton, quantize_per_token_pallas
from jaxquant.kernels.w4a16 import reference as WR
from jaxquant.kernels.w4a16.config import W4A16Config, default_config
from jaxquant.kernels.w4a16.layouts import Int4Weights
from jaxquant.kernels.w4a16.pallas_triton import w4a16_matmul_triton

ROWS = []
INTERP = jax.default_backend() != "gpu"
SMALL = os.environ.get("SMALL") == "1"
OUT = os.environ.get("OUT", "/tmp/out")


def log(row):
    ROWS.append(row)
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    H.write_json(os.path.join(OUT, "explore.json"), ROWS)


def int4_weights(key, K, N, g, asym=False):
    kq, ks, kz = jax.random.split(key, 3)
    G = cdiv(K, g)
    q = jax.random.bits(kq, (cdiv(K, 2), N), jnp.uint8)
    s = (jax.random.uniform(ks, (G, N), jnp.float32, 0.002, 0.02)).astype(jnp.bfloat16)
    z = jax.random.randint(kz, (G, N), 0, 16).astype(jnp.uint8) if asym else None
    return Int4Weights(q, s, z)


def host_dequant64(w: Int4Weights, K, g):
    q = np.asarray(w.qvalue)
    codes = np.stack([q & 0xF, q >> 4], axis=1).reshape(-1, q.shape[1])[:K].astype(np.int64)
    gi = np.arange(K) // g
    if w.zero_point is None:
        v = np.where(codes >= 8, codes - 16, codes)
    else:
        v = codes - np.asarray(w.zero_point).astype(np.int64)[gi]
    return v.astype(np.float64) * np.asarray(w.scale.astype(jnp.float32), np.float64)[gi]


def check_rows(M):
    return np.unique(np.linspace(0, M - 1, min(M, 16)).astype(int))


def w4_variants(M, K, N):
    base = default_config(M, K, N, 128, sms=num_sms())
    v = [("default", base)]
    if M <= 16:
        s = base.split_k
        v += [
            ("bits", base.replace(dequant="bits")),
            ("convert", base.replace(dequant="convert")),
            ("nopf_st1", base.replace(prefetch=False, num_stages=1)),
            ("nopf_st3", base.replace(prefetch=False, num_stages=3)),
            ("swap", base.replace(swap_ab=True)),
            ("bn256w8", base.replace(block_n=256, num_warps=8)),
            ("bk512", base.replace(block_k=512)),
            ("s2x", base.replace(split_k=s * 2)),
            ("shalf", base.replace(split_k=max(1, s // 2))),
            ("bn64", base.replace(block_n=64, split_k=max(1, s // 2))),
            ("w8", base.replace(num_warps=8)),
        ]
    else:
        v += [
            ("bn256", base.replace(block_n=256)),
            ("st4", base.replace(num_stages=4)),
            ("st2", base.replace(num_stages=2)),
            ("bits", base.replace(dequant="bits")),
            ("w4", base.replace(num_warps=4)),
            ("epi", base.replace(scale_mode="epilogue")),
            ("bk128", base.replace(block_k=128)),
            ("pf", base.replace(prefetch=True, num_stages=1)),
            ("bm64", base.replace(block_m=64)),
        ]
    return v


def run_w4(shapes, Ms, dl, quick=False):
    key = jax.random.key(0)
    g = 128
    for K, N in shapes:
        if not dl.ok(30):
            return
        R = H.pick_r(K * N * 2)
        keys = jax.random.split(jax.random.fold_in(key, K * 7 + N), R)
        ws = [int4_weights(k, K, N, g) for k in keys]
        wb = [jax.random.normal(k, (K, N), jnp.bfloat16) for k in keys]
        W64 = host_dequant64(ws[0], K, g)
        floor_bytes = K * N // 2 + cdiv(K, g) * N * 2
        for M in Ms:
            if not dl.ok(20):
                return
            x = jax.random.normal(jax.random.fold_in(key, M), (M, K), jnp.bfloat16)
            rows = check_rows(M)
            ref = np.asarray(x.astype(jnp.float32), np.float64)[rows] @ W64
            fb = floor_bytes + M * K * 2 + M * N * 2
            t_bf, sp, _ = H.time_fn(lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32).astype(x.dtype), x, wb)
            t_x, sp2, o = H.time_fn(lambda x, w: WR.w4a16_matmul_reference(x, w, group_size=g), x, ws)
            log(dict(kind="w4base", M=M, K=K, N=N, R=R, bf16_us=t_bf, bf16_spread=sp, xla_int4_us=t_x,
                     xla_err=H.rel_err(np.asarray(o.astype(jnp.float32))[rows], ref), floor_bytes=fb))
            variants = w4_variants(M, K, N)
            if quick:
                variants = variants[:1]
            for name, cfg in variants:
                if not dl.ok(10):
                    return
                try:
                    t, sp, o = H.time_fn(
                        lambda x, w, cfg=cfg: w4a16_matmul_triton(x, w, group_size=g, config=cfg, interpret=INTERP), x, ws)
                    err = H.rel_err(np.asarray(o.astype(jnp.float32))[rows], ref)
                    log(dict(kind="w4", name=name, M=M, K=K, N=N, us=t, spread=sp, err=err,
                             x_bf16=t_bf / t, gbps=fb / t / 1e3, cfg=str(cfg.to_dict())))
                except Exception as e:  # noqa: BLE001
                    log(dict(kind="w4", name=name, M=M, K=K, N=N, error=repr(e)[:600]))
        del ws, wb


def run_fp8(sizes, dl):
    key = jax.random.key(1)
    for S in sizes:
        if not dl.ok(40):
            return
        M = K = N = S
        R = 12
        keys = jax.random.split(jax.random.fold_in(key, S), R)
        wf = [jax.random.normal(k, (K, N), jnp.float32) for k in keys]
        sw = [jnp.max(jnp.abs(w), axis=0) / 448.0 for w in wf]
        wkn = [Fp8Weights((w / s).astype(jnp.float8_e4m3fn), s, "kn") for w, s in zip(wf, sw)]
        wnk = [Fp8Weights(w.qvalue.T.copy(), w.scale, "nk") for w in wkn]
        wt = [(w, jnp.max(w.scale)) for w in wkn]
        wb = [w.astype(jnp.bfloat16) for w in wf]
        del wf
        x = jax.random.normal(jax.random.fold_in(key, 5), (M, K), jnp.bfloat16)
        rows = check_rows(M)
        xq, sx = FR.quantize_per_token(x)
        w0 = np.asarray(wkn[0].qvalue.astype(jnp.float32), np.float64) * np.asarray(wkn[0].scale, np.float64)
        ref = (np.asarray(xq.astype(jnp.float32), np.float64) * np.asarray(sx, np.float64)[:, None])[rows] @ w0
        t_bf, _, _ = H.time_fn(lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32).astype(x.dtype), x, wb)
        t_pt, _, _ = H.time_fn(lambda x, w: FR.fp8_per_tensor_xla(x, w[0], w[1]), x, wt)
        t_pc, _, o = H.time_fn(lambda x, w: FR.fp8_matmul_reference(x, w), x, wkn)
        t_q, _, _ = H.time_fn(lambda x, w: FR.quantize_per_token(x)[0], x, [0] * 4)
        log(dict(kind="fp8base", M=M, bf16_us=t_bf, xla_pt_us=t_pt, xla_pc_us=t_pc, xla_quant_us=t_q,
                 xla_pc_err=H.rel_err(np.asarray(o.astype(jnp.float32))[rows], ref)))
        try:
            t_qp, _, _ = H.time_fn(lambda x, w: quantize_per_token_pallas(x, interpret=INTERP)[0], x, [0] * 4)
            log(dict(kind="fp8quant", M=M, pallas_quant_us=t_qp))
        except Exception as e:  # noqa: BLE001
            log(dict(kind="fp8quant", M=M, error=repr(e)[:600]))
        variants = [
            ("d_nk", Fp8Config(128, 256, 128, 8, 8, 3), wnk, "xla"),
            ("d_kn", Fp8Config(128, 256, 128, 8, 8, 3), wkn, "xla"),
            ("128x128_w4s4", Fp8Config(128, 128, 128, 8, 4, 4), wnk, "xla"),
            ("128x128_w8s4", Fp8Config(128, 128, 128, 8, 8, 4), wnk, "xla"),
            ("128x256k64s4", Fp8Config(128, 256, 64, 8, 8, 4), wnk, "xla"),
            ("256x128_w8s3", Fp8Config(256, 128, 128, 8, 8, 3), wnk, "xla"),
            ("d_nk_s4", Fp8Config(128, 256, 128, 8, 8, 4), wnk, "xla"),
            ("d_nk_pq", Fp8Config(128, 256, 128, 8, 8, 3), wnk, "pallas"),
        ]
        for name, cfg, wl, quant in variants:
            if not dl.ok(15):
                return

            def fn(x, w, cfg=cfg, quant=quant):
                if quant == "pallas":
                    xq, sx = quantize_per_token_pallas(x, interpret=INTERP)
                else:
                    xq, sx = FR.quantize_per_token(x)
                return fp8_matmul_triton(xq, sx, w, config=cfg, interpret=INTERP)

            try:
                t, sp, o = H.time_fn(fn, x, wl)
                err = H.rel_err(np.asarray(o.astype(jnp.float32))[rows], ref)
                log(dict(kind="fp8", name=name, M=M, us=t, spread=sp, err=err, x_bf16=t_bf / t,
                         x_pt=t_pt / t, tflops=2 * M * N * K / t / 1e6))
            except Exception as e:  # noqa: BLE001
                log(dict(kind="fp8", name=name, M=M, error=repr(e)[:600]))
        del wkn, wnk, wt, wb


def decode2_variants(M, K, N):
    from jaxquant.kernels.w4a16.config import fit_split_k
    sms = num_sms()
    base = default_config(M, K, N, 128, sms=sms)
    out = [("default", base),
           ("nopf_st1", base.replace(prefetch=False)),
           ("nopf_s2x", base.replace(prefetch=False, split_k=base.split_k * 2)),
           ("nopf_s2x_atomic", base.replace(prefetch=False, split_k=base.split_k * 2, reduce="atomic"))]
    for bn in (32, 64, 128):
        for bk in (64, 128):
            for w in (2, 4):
                n_blocks = cdiv(N, bn)
                n_iter = cdiv(K, bk)
                s = max(1, min(n_iter // 2, (8 * sms) // n_blocks))
                c = W4A16Config(16, bn, bk, s, w, 1, False, "asm", "epilogue")
                out.append((f"bn{bn}bk{bk}w{w}s{s}", c))
                if bn == 64 and w == 4:
                    out.append((f"bn{bn}bk{bk}w{w}s{s}_st2", c.replace(num_stages=2)))
                    out.append((f"bn{bn}bk{bk}w{w}s{s}_atom", c.replace(reduce="atomic")))
                    out.append((f"bn{bn}bk{bk}w{w}s{s}_swap", c.replace(swap_ab=True)))
                    out.append((f"bn{bn}bk{bk}w{w}s{s}_pf", c.replace(prefetch=True)))
    return [(n, c.replace(split_k=fit_split_k(M, K, N, c))) for n, c in out]


def run_decode2(shapes, Ms, dl):
    key = jax.random.key(0)
    g = 128
    for K, N in shapes:
        R = H.pick_r(K * N * 2)
        keys = jax.random.split(jax.random.fold_in(key, K * 7 + N), R)
        ws = [int4_weights(k, K, N, g) for k in keys]
        wb = [jax.random.normal(k, (K, N), jnp.bfloat16) for k in keys]
        W64 = host_dequant64(ws[0], K, g)
        for M in Ms:
            if not dl.ok(20):
                return
            x = jax.random.normal(jax.random.fold_in(key, M), (M, K), jnp.bfloat16)
            rows = check_rows(M)
            ref = np.asarray(x.astype(jnp.float32), np.float64)[rows] @ W64
            bf = lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32).astype(x.dtype)
            t_bf, _, _ = H.time_fn(bf, x, wb)
            d_bf, br_bf = H.device_time(bf, x, wb)
            log(dict(kind="d2base", M=M, K=K, N=N, R=R, bf16_us=t_bf, bf16_dev=d_bf, brk=str(br_bf)))
            for name, cfg in decode2_variants(M, K, N):
                if not dl.ok(8):
                    return
                fn = lambda x, w, cfg=cfg: w4a16_matmul_triton(x, w, group_size=g, config=cfg, interpret=INTERP)
                try:
                    t, sp, o = H.time_fn(fn, x, ws)
                    err = H.rel_err(np.asarray(o.astype(jnp.float32))[rows], ref)
                    d, brk = H.device_time(fn, x, ws)
                    log(dict(kind="d2", name=name, M=M, K=K, N=N, us=t, dev=d, err=err,
                             x_bf16=t_bf / t, brk=str({k[:40]: round(v, 2) for k, v in brk.items()})))
                except Exception as e:  # noqa: BLE001
                    log(dict(kind="d2", name=name, M=M, K=K, N=N, error=repr(e)[:400]))
        del ws, wb


def run_prefill2(dl):
    from jaxquant.kernels.w4a16.pallas_triton import dequantize_triton
    key = jax.random.key(3)
    g = 128
    K = N = 8192
    R = 12
    keys = jax.random.split(key, R)
    ws = [int4_weights(k, K, N, g) for k in keys]
    wb = [jax.random.normal(k, (K, N), jnp.bfloat16) for k in keys]
    W64 = host_dequant64(ws[0], K, g)
    x0 = jnp.zeros((1, K), jnp.bfloat16)
    for dq in ("asm", "bits"):
        fn = lambda x, w, dq=dq: dequantize_triton(w, K, group_size=g, dequant=dq)
        t, _, o = H.time_fn(fn, x0, ws)
        d, brk = H.device_time(fn, x0, ws)
        exact = bool(np.array_equal(np.asarray(o.astype(jnp.float32), np.float64), W64.astype(np.float32).astype(jnp.bfloat16).astype(np.float64)))
        log(dict(kind="dequant", dq=dq, us=t, dev=d, gbps=(K * N * 2.5) / d / 1e3, exact=exact))
    for M in (128, 1024, 8192):
        if not dl.ok(30):
            return
        x = jax.random.normal(jax.random.fold_in(key, M), (M, K), jnp.bfloat16)
        rows = check_rows(M)
        ref = np.asarray(x.astype(jnp.float32), np.float64)[rows] @ W64
        bf = lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32).astype(x.dtype)
        t_bf, _, _ = H.time_fn(bf, x, wb)
        base = default_config(M, K, N, g)
        vs = [("hybrid", W4A16Config(mode="dequant_dot")),
              ("pf_bk128", base.replace(prefetch=True, num_stages=1, block_k=128)),
              ("pf_bk128_bn256", base.replace(prefetch=True, num_stages=1, block_k=128, block_n=256)),
              ("pf_bk128_epi", base.replace(prefetch=True, num_stages=1, block_k=128, scale_mode="epilogue"))]
        if M == 128:
            vs += [("m128_s2_bn64", W4A16Config(128, 64, 128, 2, 4, 1, True, "asm", "weight")),
                   ("m128_s4_bn64", W4A16Config(128, 64, 128, 4, 4, 1, True, "asm", "weight")),
                   ("m128_s2_bn128w8", W4A16Config(128, 128, 128, 2, 8, 1, True, "asm", "weight")),
                   ("m64x2_bn64s2", W4A16Config(64, 64, 128, 2, 4, 1, True, "asm", "weight")),
                   ("m128_s4_bn64_swap", W4A16Config(128, 64, 128, 4, 4, 1, True, "asm", "weight", True))]
        for name, cfg in vs:
            if not dl.ok(15):
                return
            fn = lambda x, w, cfg=cfg: w4a16_matmul_triton(x, w, group_size=g, config=cfg)
            try:
                t, sp, o = H.time_fn(fn, x, ws)
                err = H.rel_err(np.asarray(o.astype(jnp.float32))[rows], ref)
                d, brk = H.device_time(fn, x, ws)
                log(dict(kind="p2", name=name, M=M, us=t, dev=d, err=err, x_bf16=t_bf / t, bf16_us=t_bf,
                         brk=str({k[:40]: round(v, 1) for k, v in brk.items()})))
            except Exception as e:  # noqa: BLE001
                log(dict(kind="p2", name=name, M=M, error=repr(e)[:400]))


def run_fp8b(dl):
    key = jax.random.key(1)
    S = 8192
    M = K = N = S
    R = 12
    keys = jax.random.split(key, R)
    wq = [jax.random.normal(k, (N, K), jnp.float32).astype(jnp.float8_e4m3fn) for k in keys]
    wnk = [Fp8Weights(w, jnp.full((N,), 0.01, jnp.float32), "nk") for w in wq]
    x = jax.random.normal(key, (M, K), jnp.bfloat16)
    pc = lambda x, w: FR.fp8_matmul_reference(x, w)
    d, brk = H.device_time(pc, x, wnk, iters=2)
    log(dict(kind="fp8b", name="xla_pc_nk", dev=d, brk=str(brk)))
    for name, cfg in [("128x256k128w8s3g8", Fp8Config(128, 256, 128, 8, 8, 3)),
                      ("128x256k128w8s3g16", Fp8Config(128, 256, 128, 16, 8, 3)),
                      ("128x256k64w8s5", Fp8Config(128, 256, 64, 8, 8, 5)),
                      ("256x128k64w8s4", Fp8Config(256, 128, 64, 8, 8, 4)),
                      ("128x128k256w4s3", Fp8Config(128, 128, 256, 8, 4, 3))]:
        if not dl.ok(15):
            return
        fn = lambda x, w, cfg=cfg: fp8_matmul_triton(*FR.quantize_per_token(x), w, config=cfg)
        try:
            d, brk = H.device_time(fn, x, wnk, iters=2)
            log(dict(kind="fp8b", name=name, dev=d, tflops=2 * M * N * K / d / 1e6, brk=str({k[:40]: round(v, 1) for k, v in brk.items()})))
        except Exception as e:  # noqa: BLE001
            log(dict(kind="fp8b", name=name, error=repr(e)[:400]))


def main(argv):
    what = argv or ["w4", "fp8", "prefill"]
    dl = H.Deadline(float(os.environ.get("BUDGET_S", "520")))
    dev = jax.devices()[0]
    print("device", dev.device_kind, "jax", jax.__version__, "sms", num_sms(), flush=True)
    bw = H.copy_bandwidth(1 << 24 if SMALL else 2 << 30)
    log(dict(kind="bw", device=dev.device_kind, jax=jax.__version__, copy_TBps=bw / 1e12))
    if SMALL and "decode2" in what:
        run_decode2([(512, 256)], [1], dl)
        return
    if SMALL:
        run_w4([(512, 256)], [1, 16], dl, quick=True)
        run_fp8([256], dl)
        run_w4([(256, 256)], [128], dl, quick=True)
        return
    if "decode2" in what:
        run_decode2([(8192, 8192)], [1, 16], dl)
    if "prefill2" in what:
        run_prefill2(dl)
    if "decode2b" in what:
        run_decode2([(4096, 4096)], [1, 16], dl)
    if "fp8b" in what:
        run_fp8b(dl)
    if "w4" in what:
        run_w4([(8192, 8192)], [1, 16], dl)
    if "fp8" in what:
        run_fp8([4096, 8192], dl)
    if "prefill" in what:
        run_w4([(8192, 8192)], [128, 1024, 8192], dl)
    if "w4" in what:
        run_w4([(4096, 4096)], [1, 16], dl)
    if "w4more" in what:
        run_w4([(4096, 14336), (14336, 4096)], [1, 16], dl, quick=False)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except Exception:  # noqa: BLE001
        traceback.print_exc()
    finally:
        H.write_json(os.path.join(OUT, "explore.json"), ROWS)
