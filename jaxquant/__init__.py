"""jaxquant: quantization for JAX/Flax.

    qparams = jaxquant.quantize(params, "w4a16")     # or a Recipe, or a recipe file
    print(jaxquant.summary(qparams, reference=params))
    params2 = jaxquant.dequantize(qparams)
"""

from jaxquant.core.qarray import QArray, QMeta, is_qarray
from jaxquant.core.quantize import fake_quantize, quantize_array
from jaxquant.core.spec import ActivationSpec, ArraySpec, Clipping
from jaxquant.errors import (
    FormatError,
    GranularityError,
    JaxquantError,
    LeafError,
    RecipeError,
)
from jaxquant.formats import format_names, get_format
from jaxquant.inference import intercept, quantized_dot_general
from jaxquant.module_types import linen_module_types, nnx_module_types
from jaxquant.recipes import (
    Recipe,
    Rule,
    WeightScheme,
    activation_scheme,
    get_preset,
    load_recipe,
    preset_names,
    save_recipe,
)
from jaxquant.summary import Summary, summary
from jaxquant.transform import dequantize, quantize

__version__ = "0.1.0"

__all__ = [
    "ActivationSpec",
    "ArraySpec",
    "Clipping",
    "FormatError",
    "GranularityError",
    "JaxquantError",
    "LeafError",
    "QArray",
    "QMeta",
    "Recipe",
    "RecipeError",
    "Rule",
    "Summary",
    "WeightScheme",
    "activation_scheme",
    "dequantize",
    "fake_quantize",
    "format_names",
    "get_format",
    "get_preset",
    "intercept",
    "is_qarray",
    "linen_module_types",
    "load_recipe",
    "nnx_module_types",
    "preset_names",
    "quantize",
    "quantize_array",
    "quantized_dot_general",
    "save_recipe",
    "summary",
]
