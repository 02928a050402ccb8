"""W8A8 with static activation scales calibrated on sample batches (percentile clipping).

    python examples/static_activation_scales.py
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

import jaxquant as jq
from jaxquant.calibration.activations import calibrate_activations


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(64, name="fc2")(nn.relu(nn.Dense(256, name="fc1")(x)))


def main() -> None:
    model = MLP()
    batches = [jax.random.normal(jax.random.key(i), (32, 128)) for i in range(4)]
    params = model.init(jax.random.key(0), batches[0])
    act = jq.activation_scheme("int8", "tensor", dynamic=False,
                               clipping=jq.Clipping("percentile", percentile=99.99))
    recipe = jq.Recipe((jq.Rule(("re:kernel$",), jq.WeightScheme("int8"), activation=act),))
    qparams = calibrate_activations(lambda p, b: model.apply(p, b),
                                    jq.quantize(params, recipe), batches)
    for name in ("fc1", "fc2"):
        print(name, "static input scale:", float(qparams["params"][name]["kernel"].input_scale))
    x = jax.random.normal(jax.random.key(9), (32, 128))
    with jq.intercept(report=True) as report:
        out = jax.jit(model.apply)(qparams, x)
    print(report)
    ref = model.apply(params, x)
    print("output rel. error:", float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref)))


if __name__ == "__main__":
    main()
