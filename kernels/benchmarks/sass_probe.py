"""Dump the SASS of Mosaic GPU W4A16 kernel variants and count instructions by opcode.

    python -m jaxquant.kernels.benchmarks.sass_probe [--mkn 1x8192x8192] [--out DIR]

For each config the kernel is compiled with MOSAIC_GPU_DUMP_SASS set (SASS files under
DIR/<config>/), checked against the float64 reference, timed (harness.time_fn), and the
opcode histogram of its hottest loop (the largest block ending in a backward branch) is
printed and written to DIR/sass-probe.json. Needs an sm_90 GPU and jax >= 0.11.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxquant.kernels.benchmarks import harness as H
from jaxquant.kernels.w4a16 import bench, wgmma_tiles
from jaxquant.kernels.w4a16.mosaic_gpu import MosaicConfig, default_config, w4a16_matmul_mosaic

_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_LABEL = re.compile(r"^\s*(\.L_x_\d+):")


def parse_sass(text: str) -> list[tuple[int, str, str]]:
    """(address, opcode, operands) of every instruction in a SASS dump."""
    return [(int(m.group(1), 16), m.group(3), m.group(4)) for m in _INSTR.finditer(text)]


def hottest_loop(instrs: list[tuple[int, str, str]], text: str) -> list[tuple[int, str, str]]:
    """Instructions of the largest address range [target, branch] closed by a backward BRA."""
    labels, addr_after = {}, None
    for line in text.splitlines():
        if (m := _LABEL.match(line)):
            labels[m.group(1)] = None
            addr_after = m.group(1)
            continue
        if addr_after and (mi := _INSTR.search(line)):
            labels[addr_after] = int(mi.group(1), 16)
            addr_after = None
    best = []
    for addr, op, args in instrs:
        if op.startswith("BRA"):
            tgt = re.search(r"`?\(?(\.L_x_\d+)", args)
            if tgt and labels.get(tgt.group(1)) is not None and labels[tgt.group(1)] <= addr:
                body = [i for i in instrs if labels[tgt.group(1)] <= i[0] <= addr]
                if len(body) > len(best):
                    best = body
    return best


def histogram(instrs) -> dict[str, int]:
    return dict(collections.Counter(op.split(".")[0] for _, op, _ in instrs).most_common())


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--mkn", default="1x8192x8192")
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/sass-probe"))
    args = p.parse_args(argv)
    M, K, N = (int(v) for v in args.mkn.split("x"))
    g = 128
    base = default_config(M, K, N, g)
    epi = MosaicConfig(**{**base.to_dict(), "scale_mode": "epilogue"})
    configs = {"weight": (base, False), "epilogue": (epi, False), "wgmma layout": (epi, True)}
    ss = bench.ShapeSet(K, N, g, layout="nk")
    x = jnp.asarray(np.random.default_rng(0).standard_normal((M, K)), jnp.bfloat16)
    ref = np.asarray(x, np.float64) @ ss.W64
    rows = []
    ws_wg = [(wgmma_tiles.pack(w.qvalue.astype(jnp.int8)), w.scale, w.zero_point) for w in ss.ws]
    ws_nk = [(w.qvalue, w.scale, w.zero_point) for w in ss.ws]
    for name, (cfg, shuffled) in configs.items():
        ws = ws_wg if shuffled else ws_nk
        d = os.path.join(args.out, name)
        os.makedirs(d, exist_ok=True)
        fn = lambda x, w, cfg=cfg: w4a16_matmul_mosaic(x, w[0], w[1], w[2], group_size=g, config=cfg)
        os.environ["MOSAIC_GPU_DUMP_SASS"] = "1"
        os.environ["MOSAIC_GPU_DUMP_TO"] = d
        y = np.asarray(jax.jit(fn)(x, ws[0]), np.float64)
        del os.environ["MOSAIC_GPU_DUMP_SASS"], os.environ["MOSAIC_GPU_DUMP_TO"]
        err = H.rel_err(y, ref)
        us = H.time_fn(fn, x, ws)[0]
        dev_us = H.device_time(fn, x, ws)[0]
        texts = [open(t, errors="replace").read() for t in glob.glob(os.path.join(d, "*"))]
        text = max((t for t in texts if _INSTR.search(t)), key=len, default="")
        instrs = parse_sass(text)
        loop = hottest_loop(instrs, text)
        row = dict(config=name, cfg=cfg.to_dict(), shuffled=shuffled, M=M, K=K, N=N, rel_err=err, us=us,
                   dev_us=dev_us, total_instrs=len(instrs), loop_instrs=len(loop),
                   loop_histogram=histogram(loop), files=sorted(os.listdir(d)))
        rows.append(row)
        print(json.dumps(row), flush=True)
    with open(os.path.join(args.out, "sass-probe.json"), "w") as fh:
        json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
