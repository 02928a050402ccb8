"""Save a quantized model with Orbax, then restore it three ways: whole onto a sharding, one leaf
at a time, and as an abstract tree checked against the model's shapes.

    python examples/export_restore.py [--width 512] [--out /tmp/jq-orbax]
"""

import argparse
import tempfile

import flax.linen as nn
import jax
import numpy as np

import jaxquant as jq
from jaxquant import checkpoint


class MLP(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x):
        x = nn.gelu(nn.Dense(4 * self.width, name="up")(x))
        return nn.Dense(self.width, name="down")(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--recipe", default="w4a16")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    model = MLP(args.width)
    x = jax.random.normal(jax.random.key(1), (4, args.width))
    params = model.init(jax.random.key(0), x)
    qparams = jq.quantize(params, args.recipe)
    out = args.out or tempfile.mkdtemp() + "/ckpt"
    checkpoint.save(out, qparams, jq.get_preset(args.recipe), overwrite=True)

    # 1. everything, onto one sharding (a pytree or a callable gives one per leaf instead)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("x",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    restored, recipe, info = checkpoint.restore(out, sharding=replicated)
    with jq.intercept():
        a, b = model.apply(qparams, x), model.apply(restored, x)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    print(f"restored {recipe.name} (format v{info['format_version']}, jaxquant "
          f"{info['library_version']}): identical outputs")

    # 2. lazily, one leaf at a time
    ckpt = checkpoint.open_checkpoint(out)
    for path, leaf in ckpt.leaves():
        print(f"  {path}: {leaf!r}" if isinstance(leaf, jq.QArray) else f"  {path}: {leaf.shape}")

    # 3. abstract: shapes and dtypes only, checked against the model before reading anything
    checkpoint.check_tree(checkpoint.abstract(out), jax.eval_shape(model.init, jax.random.key(0), x))
    print(f"abstract tree matches the model; {out}")


if __name__ == "__main__":
    main()
