"""Low-rank adapters (LoRA) on the decoder's projections: their layout, initialisation, and
merging into the weights.

A projection leaf W of `llama.param_specs` ([L, *in, *out], e.g. wq [L, D, H, Dh]) gets an adapter
{"a": [L, *in, r], "b": [L, r, *out]} in float32, and the layer computes x·W + s·(x·A)·B with
s = alpha / rank (`llama.linear`). Adapters are a pytree of their own (what a LoRA run trains,
checkpoints and exports); `attach` puts them beside a frozen base under `layers.lora`, so the
decoder scans them with the layers and one layer's adapters are in use at a time. The base is
never copied: the KL reference of a LoRA run is the base itself (adapters off).

`merge` folds the adapters into the weights (W + s·A·B), the form an HF export holds; the
decode loop's per-layer weights are merged the same way once per sampling call
(`model.decode.decode_weights`), so decoding costs what the base model costs.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from vinejax.model import llama
from vinejax.model.config import ModelConfig

ADAPTER_DTYPE = jnp.float32  # adapters and their optimizer state, whatever the base's dtype
RANK_AXIS = "lora_rank"  # the logical axis of the rank (replicated)


def in_dims(leaf: str) -> int:
    """How many leading per-layer dims of projection `leaf` its input contracts (wo: heads and head_dim)."""
    return 2 if leaf == "wo" else 1


def adapter_specs(cfg: ModelConfig) -> dict:
    """{leaf: {"a": (shape, logical axes), "b": (shape, logical axes)}} of `cfg.lora`'s adapters."""
    layers, r = llama.param_specs(cfg)["layers"], cfg.lora.rank
    out = {}
    for leaf in cfg.lora.leaves:
        shape, axes = layers[leaf]
        n = 1 + in_dims(leaf)  # the layers axis and the input dims
        out[leaf] = {"a": (shape[:n] + (r,), axes[:n] + (RANK_AXIS,)),
                     "b": ((shape[0], r) + shape[n:], (axes[0], RANK_AXIS) + axes[n:])}
    return out


def _is_spec(x) -> bool:
    return isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], tuple)


def adapter_logical_axes(cfg: ModelConfig) -> dict:
    """The adapters pytree with each leaf replaced by its tuple of logical axis names."""
    return jax.tree.map(lambda s: s[1], adapter_specs(cfg), is_leaf=_is_spec)


def adapter_shapes(cfg: ModelConfig) -> dict:
    """The adapters pytree of float32 `jax.ShapeDtypeStruct`s."""
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s[0], ADAPTER_DTYPE), adapter_specs(cfg), is_leaf=_is_spec)


def init_adapters(cfg: ModelConfig, rng: jax.Array) -> dict:
    """Fresh adapters as PEFT makes them: A ~ U(±1/√fan_in) (kaiming-uniform with a = √5, fan_in
    the projection's input size), B = 0, so the adapted model starts as the base."""
    specs = adapter_specs(cfg)
    out = {}
    for key, leaf in zip(jax.random.split(rng, len(specs)), specs):
        (a_shape, _), (b_shape, _) = specs[leaf]["a"], specs[leaf]["b"]
        bound = 1.0 / math.sqrt(math.prod(a_shape[1:-1]))
        out[leaf] = {"a": jax.random.uniform(key, a_shape, ADAPTER_DTYPE, -bound, bound),
                     "b": jnp.zeros(b_shape, ADAPTER_DTYPE)}
    return out


def attach(base: dict, adapters: Optional[dict], dropout_key: Optional[jax.Array] = None) -> dict:
    """The params the decoder runs with: `base` (not copied) with `adapters` under `layers.lora`
    and, for LoRA dropout while training, one key per layer under `layers.lora_key`."""
    if adapters is None:
        return base
    layers = dict(base["layers"], lora=adapters)
    if dropout_key is not None:
        layers["lora_key"] = jax.random.split(dropout_key, jax.tree.leaves(base["layers"])[0].shape[0])
    return dict(base, layers=layers)


def adapters_of(params: dict) -> Optional[dict]:
    """The adapters `attach` put in `params`, or None."""
    return params["layers"].get("lora")


def base_of(params: dict) -> dict:
    """`params` without adapters (the base they were attached to)."""
    layers = {k: v for k, v in params["layers"].items() if k not in ("lora", "lora_key")}
    return dict(params, layers=layers)


def merged_leaf(cfg: ModelConfig, layers: dict, leaf: str, dtype=None) -> jax.Array:
    """Projection `leaf` of `layers` (stacked [L, ...] or one layer's) with its adapter, if
    `layers["lora"]` holds one, merged in: W + s·A·B computed in float32, returned in `dtype`
    (default: W's)."""
    w = layers[leaf]
    adapter = layers.get("lora", {}).get(leaf)
    dtype = jnp.dtype(dtype or w.dtype)
    if adapter is None:
        return w.astype(dtype)
    # A·B laid out as W (A's input dims as W's, B's output dims as W's, the rank whole): the
    # product is then made where W's shards are, not summed over a split rank as a whole matrix
    axes = llama.param_specs(cfg)["layers"][leaf][1][-w.ndim:]
    lead, n_in = w.ndim - len(llama.param_specs(cfg)["layers"][leaf][1]) + 1, in_dims(leaf)
    a = nn.with_logical_constraint(adapter["a"], axes[:lead + n_in] + (None,))
    b = nn.with_logical_constraint(adapter["b"], axes[:lead] + (None,) + axes[lead + n_in:])
    return merge_weight(w, a, b, scale=cfg.lora.scale, n_in=n_in, dtype=dtype)


@functools.partial(jax.jit, static_argnames=("scale", "n_in", "dtype"))
def merge_weight(w: jax.Array, a: jax.Array, b: jax.Array, *, scale: float, n_in: int, dtype) -> jax.Array:
    """W + scale·A·B in float32, cast to `dtype`: w [*lead, *in, *out], a [*lead, *in, r],
    b [*lead, r, *out] (lead: the layers axis, or nothing)."""
    lead, r = a.ndim - n_in - 1, a.shape[-1]
    a2 = a.reshape(*a.shape[:lead], -1, r).astype(jnp.float32)  # [*lead, in, r]
    b2 = b.reshape(*b.shape[:lead], r, -1).astype(jnp.float32)  # [*lead, r, out]
    return (w.astype(jnp.float32) + scale * (a2 @ b2).reshape(w.shape)).astype(dtype)


def merge(cfg: ModelConfig, params: dict, dtype=None) -> dict:
    """`params` with every adapter merged into its weight (`merged_leaf`) and no adapters left: a
    plain params tree (what an HF export holds)."""
    layers = params["layers"]
    base = base_of(params)
    merged = {leaf: merged_leaf(cfg, layers, leaf, dtype) for leaf in (adapters_of(params) or {})}
    return dict(base, layers=dict(base["layers"], **merged))
