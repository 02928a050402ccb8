"""NF4: the 16-level NormalFloat code of QLoRA (Dettmers et al., 2023).

The levels are quantiles of N(0, 1) normalized to [-1, 1] with an exact zero; the values are the
ones bitsandbytes ships. A value y = x / absmax(block) is encoded as the index of the nearest level.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from jax import Array

NF4_LEVELS = np.array(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    np.float32,
)
_NF4_MIDPOINTS = (NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2


@dataclasses.dataclass(frozen=True)
class NF4Codec:
    """NF4 codes as uint8 nibbles (index into NF4_LEVELS), packed two per byte."""

    bits = 4
    packed = True
    qmax = 1.0
    storage_dtype = jnp.dtype(jnp.uint8)

    def encode(self, y: Array) -> Array:
        y = jnp.clip(y, -1.0, 1.0)
        return jnp.sum(y[..., None] > jnp.asarray(_NF4_MIDPOINTS), axis=-1).astype(jnp.uint8)

    def decode(self, codes: Array) -> Array:
        return jnp.asarray(NF4_LEVELS)[codes.astype(jnp.int32)]
