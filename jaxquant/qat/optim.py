"""Optimizers for QAT trees: separate learning rates for weights and learned log-scales."""

from __future__ import annotations

from typing import Any

import jax
import optax

from jaxquant.qat.params import QATWeight, is_qat_weight


def param_labels(qat: Any) -> Any:
    """Same structure as the QAT tree with a label per leaf: "scale" for log_scale, "frozen" for
    zero_point, "weight" for everything else."""
    def label(x: Any) -> Any:
        if not is_qat_weight(x):
            return "weight"
        return QATWeight("weight", None if x.log_scale is None else "scale",
                         None if x.zero_point is None else "frozen", x.spec, x.activation)

    return jax.tree_util.tree_map(label, qat, is_leaf=is_qat_weight)


def qat_optimizer(learning_rate: float | optax.Schedule,
                  scale_learning_rate: float | optax.Schedule | None = None
                  ) -> optax.GradientTransformation:
    """Adam on weights (and any float parameter) at `learning_rate`, on LSQ log-scales at
    `scale_learning_rate` (default: the same), zero-points frozen. Adam normalizes gradient
    magnitudes, so the scales' rate is what sets how fast they move (per step, in log units)."""
    return optax.multi_transform(
        {"weight": optax.adam(learning_rate),
         "scale": optax.adam(learning_rate if scale_learning_rate is None else scale_learning_rate),
         "frozen": optax.set_to_zero()},
        param_labels,
    )
