"""Tensor-parallel forward of the reference Llama under shard_map, with explicit collectives.

Each device runs the model's own Linen code with a local config (n_heads, n_kv_heads, ffn_dim
divided by the model-axis size) on its shard of the parameters; a method interceptor adds the
collectives of the Megatron layout:
  row-parallel o_proj / down_proj   partial outputs summed with psum (W8A8: pmax of the
                                    activation amax first, see jaxquant.sharding.row_parallel);
  column-parallel untied lm_head    vocabulary slices joined with all_gather.
Quantized layers run through jaxquant's quantized dot on the local QArray, so the Pallas W4A16
kernel runs per shard. Dispatch settings (backend, report) come from
jaxquant.inference.dispatch.settings(...) around the call, not from jaxquant.intercept (whose
interceptor would run before this one).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
from jax import Array, lax
from jax.sharding import Mesh, PartitionSpec

from jaxquant.core.qarray import QArray
from jaxquant.inference import linen as quantized_linen
from jaxquant.inference.qdot import quantized_dot_general
from jaxquant.models import kv_cache
from jaxquant.models.kv_cache import KVCache
from jaxquant.models.llama import Llama
from jaxquant.sharding.llama_tp import layer_kind, local_config
from jaxquant.sharding.row_parallel import row_parallel_dot
from jaxquant.sharding.specs import localize_tree, named_shardings

P = PartitionSpec


def tp_interceptor(axis_name: str) -> Callable:
    """nn.intercept_methods hook adding the tensor-parallel collectives to Dense layers."""

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or not isinstance(module, nn.Dense):
            return next_fun(*args, **kwargs)
        kind = layer_kind(f"{module.name}/kernel")
        if kind is None or module.use_bias:
            return next_fun(*args, **kwargs)
        kernel = module.scope.get_variable("params", "kernel")
        x = args[0]
        dtype = module.dtype or x.dtype
        name = "/".join(module.path)
        if kind == "row":
            return row_parallel_dot(x.astype(dtype), kernel, axis_name, dtype, name)
        if module.name == "lm_head":  # vocabulary split: local logits, then gathered
            y = quantized_dot_general(
                x.astype(dtype), kernel if isinstance(kernel, QArray) else kernel.astype(dtype),
                (((x.ndim - 1,), (0,)), ((), ())), out_dtype=dtype, name=name)
            return lax.all_gather(y, axis_name, axis=x.ndim - 1, tiled=True)
        return next_fun(*args, **kwargs)

    return interceptor


def cache_spec(cache: KVCache, data_axis: str | None, model_axis: str) -> KVCache:
    """PartitionSpecs of a tensor-parallel KVCache (real or abstract): batch over data_axis,
    kv heads over the model axis (codes and scales are [n_layers, B, n_kv_heads, ...])."""
    return jax.tree.map(lambda a: P(None, data_axis, model_axis) if a.ndim == 5 else P(), cache)


def make_tp_apply(model: Llama, mesh: Mesh, param_specs: Any, *, model_axis: str = "model",
                  data_axis: str | None = None) -> Callable:
    """apply(params, tokens int32 [B, T], cache=None) -> (logits f32 [B, T, V], cache), running
    `model` tensor-parallel over `model_axis` (and data-parallel over `data_axis`) with
    shard_map. params: sharded by `param_specs` (jaxquant.sharding.tree_specs of the parameter
    tree, QArrays included); cache: from init_tp_cache. Call it under jax.jit."""
    tp = mesh.shape[model_axis]
    local = Llama(local_config(model.cfg, tp))
    tok_spec = P(data_axis, None)
    out_spec = P(data_axis, None, None)

    def body(params: Any, tokens: Array, cache: KVCache | None):
        params = localize_tree(params)
        with nn.intercept_methods(tp_interceptor(model_axis)), \
                nn.intercept_methods(quantized_linen.interceptor):
            return local.apply(params, tokens, cache=cache)

    def apply(params: Any, tokens: Array, cache: KVCache | None = None):
        if cache is None:
            fn = jax.shard_map(lambda p, t: body(p, t, None)[0], mesh=mesh,
                               in_specs=(param_specs, tok_spec), out_specs=out_spec,
                               check_vma=False)
            return fn(params, tokens), None
        cspec = cache_spec(cache, data_axis, model_axis)
        fn = jax.shard_map(body, mesh=mesh, in_specs=(param_specs, tok_spec, cspec),
                           out_specs=(out_spec, cspec), check_vma=False)
        return fn(params, tokens, cache)

    return apply


def init_tp_cache(model: Llama, mesh: Mesh, batch: int, max_len: int, *,
                  model_axis: str = "model", data_axis: str | None = None,
                  kv: Any = None) -> KVCache:
    """An empty KVCache for make_tp_apply (kv: a storage format, see
    jaxquant.models.kv_cache.init_cache), created directly in its sharded layout."""
    make = lambda: kv_cache.init_cache(model.cfg, batch, max_len, kv=kv)  # noqa: E731
    specs = cache_spec(jax.eval_shape(make), data_axis, model_axis)
    return jax.jit(make, out_shardings=named_shardings(specs, mesh))()
