"""Export a quantized Llama-style tree as a compressed-tensors checkpoint (the layout vLLM serves),
inspect it, import it back, and check the arrays and outputs are identical.

    python examples/export_restore_compressed_tensors.py [--width 256] [--out /tmp/jq-ct]
"""

import argparse
import tempfile

import flax.linen as nn
import jax
import numpy as np

import jaxquant as jq
from jaxquant.cli.inspect import describe
from jaxquant.interop import compressed_tensors


class Block(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(self.width, use_bias=False, name="q_proj")(x)
        return nn.Dense(self.width, use_bias=False, name="o_proj")(nn.silu(h))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    model = Block(args.width)
    x = jax.random.normal(jax.random.key(1), (4, args.width))
    params = {"params": {"layers_0": {"attn": model.init(jax.random.key(0), x)["params"]}}}
    # int4, groups of 64 (compressed-tensors needs groups that divide the input size)
    recipe = jq.Recipe((jq.Rule(("kernel",), jq.WeightScheme("uint4", group_size=64)),),
                       name="w4a16-asym-g64")
    qparams = jq.quantize(params, recipe)
    out = args.out or tempfile.mkdtemp() + "/ct"
    compressed_tensors.export_dir(out, qparams, recipe=recipe, overwrite=True)

    info = describe(out)
    for leaf in info["leaves"]:
        print(f"  {leaf['name']}: {leaf['scheme']}, {leaf['bytes']:,} bytes")

    back = compressed_tensors.import_dir(out)
    restored = back.to_params()
    apply = lambda p: model.apply({"params": p["params"]["layers_0"]["attn"]}, x)  # noqa: E731
    with jq.intercept():
        a, b = apply(qparams), apply(restored)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    print(f"{out}: {info['format']}, {info['disk_bytes']:,} bytes on disk; imported back "
          f"with recipe {back.extra['recipe']['name']!r}: identical outputs")


if __name__ == "__main__":
    main()
