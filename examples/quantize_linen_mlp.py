"""Quantize a Flax Linen MLP with every preset, run it quantized under jit, print the summary.

    python examples/quantize_linen_mlp.py [--width 1024]
"""

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp

import jaxquant as jq


class MLP(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x):
        x = nn.gelu(nn.Dense(self.width, name="fc1")(x))
        x = nn.LayerNorm(name="norm")(x)
        return nn.Dense(x.shape[-1] // 4, name="fc2")(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, default=1024)
    args = parser.parse_args()

    model = MLP(args.width)
    x = jax.random.normal(jax.random.key(1), (8, args.width))
    params = model.init(jax.random.key(0), x)
    reference = model.apply(params, x)

    for preset in jq.preset_names(calibrated=False):
        qparams = jq.quantize(params, preset)
        with jq.intercept():
            out = jax.jit(model.apply)(qparams, x)
        err = float(jnp.linalg.norm(out - reference) / jnp.linalg.norm(reference))
        s = jq.summary(qparams, reference=params)
        print(f"{preset:12s} {s.compression:5.2f}x smaller, output rel. error {err:.4f}")
    print(jq.summary(jq.quantize(params, "w4a16"), reference=params))


if __name__ == "__main__":
    main()
