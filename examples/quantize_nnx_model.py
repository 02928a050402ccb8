"""Quantize an NNX model's state with a recipe that targets module classes, run it quantized.

    python examples/quantize_nnx_model.py [--width 512]
"""

import argparse

import jax
import jax.numpy as jnp
from flax import nnx

import jaxquant as jq


class Block(nnx.Module):
    def __init__(self, width: int, rngs: nnx.Rngs):
        self.up = nnx.Linear(width, 4 * width, rngs=rngs)
        self.down = nnx.Linear(4 * width, width, rngs=rngs)
        self.norm = nnx.RMSNorm(width, rngs=rngs)

    def __call__(self, x):
        return x + self.down(jax.nn.silu(self.up(self.norm(x))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, default=512)
    args = parser.parse_args()

    model = Block(args.width, nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (4, args.width))
    graphdef, state = nnx.split(model)

    # Target the class: every nnx.Linear gets INT8 weights with INT8 per-token activations.
    recipe = jq.Recipe((jq.Rule(("Linear",), jq.WeightScheme("int8"),
                                activation=jq.activation_scheme("int8")),))
    qstate = jq.quantize(state, recipe, module_types=jq.nnx_module_types(model))
    print(jq.summary(qstate, reference=state))

    @jax.jit
    def forward(qstate, x):
        with jq.intercept():
            return nnx.merge(graphdef, qstate)(x)

    out, ref = forward(qstate, x), model(x)
    print("output rel. error:", float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref)))


if __name__ == "__main__":
    main()
