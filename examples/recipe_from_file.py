"""Load a YAML recipe, quantize, save the quantized model with Orbax, restore it, compare.

    python examples/recipe_from_file.py [--recipe examples/recipe.yaml] [--out /tmp/jq-example]
"""

import argparse
import pathlib
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxquant as jq
from jaxquant import checkpoint


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        for i in range(2):
            h = nn.Dense(4 * x.shape[-1], name=f"layer_{i}_fc1")(x)
            x = x + nn.Dense(x.shape[-1], name=f"layer_{i}_fc2")(nn.gelu(h))
        return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", default=str(pathlib.Path(__file__).with_name("recipe.yaml")))
    parser.add_argument("--out", default=None)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args()

    model = Net()
    x = jax.random.normal(jax.random.key(1), (4, args.width))
    params = model.init(jax.random.key(0), x)
    recipe = jq.load_recipe(args.recipe)
    qparams = jq.quantize(params, recipe)
    print(jq.summary(qparams, reference=params))

    out_dir = args.out or tempfile.mkdtemp() + "/checkpoint"
    checkpoint.save(out_dir, qparams, recipe, overwrite=True)
    restored, restored_recipe, _ = checkpoint.restore(out_dir)
    with jq.intercept():
        a = jax.jit(model.apply)(qparams, x)
        b = jax.jit(model.apply)(restored, x)
    assert restored_recipe == recipe
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    print(f"saved to {out_dir}; restored model gives identical outputs "
          f"(max |diff| = {float(jnp.max(jnp.abs(a - b)))})")


if __name__ == "__main__":
    main()
