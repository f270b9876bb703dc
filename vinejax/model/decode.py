"""Decoding one token per row: the step a sampler runs in its loop.

Same math as `llama.forward_cached` on a single new token per row, built from the same pieces
(`embed`, `rms_norm`, `rope_tables`/`apply_rope`, `attention`, `lm_logits`), but laid out for a
cheap step. Before the loop, `decode_weights` fuses each layer's q/k/v and gate/up projections
into single matrices and `decode_caches` splits the stacked `KVCache` into one heads-major
buffer per layer; the step itself then has no per-layer slices, transposes or cache copies.
Layers are unrolled in Python, so compile time grows with depth (`llama.forward_cached` inside
a loop is the scanned alternative).

    weights = decode_weights(params, cfg)              # once per decode call
    caches = decode_caches(cache)
    logits, caches = decode_step(params, weights, cfg, tokens, caches)   # per step
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from vinejax.model import llama
from vinejax.model.config import ModelConfig

LAYER_CACHE_AXES = ("batch", "kv_heads", "length", "head_dim")  # logical axes of one layer's k / v


class DecodeCaches(NamedTuple):
    """Per-layer caches. k, v: tuples of L arrays [R, Hkv, S, Dh]; lengths: int32[R] valid slots."""

    k: tuple
    v: tuple
    lengths: jax.Array


def decode_weights(params: dict, cfg: ModelConfig) -> tuple:
    """Per-layer decode weights in the compute dtype, one dict per layer:
    wqkv [D, (H+2Hkv)*Dh], wo [H*Dh, D], w_gu [D, 2F], w_down [F, D], attn_norm/mlp_norm [D],
    and (with attention_bias) bqkv [(H+2Hkv)*Dh]."""
    d, dt = cfg.hidden_size, cfg.compute_dtype
    out = []
    for i in range(cfg.num_layers):
        p = jax.tree.map(lambda a: a[i], params["layers"])
        w = {
            "attn_norm": p["attn_norm"],
            "mlp_norm": p["mlp_norm"],
            "wqkv": jnp.concatenate([p[n].reshape(d, -1) for n in ("wq", "wk", "wv")], axis=1).astype(dt),
            "wo": p["wo"].reshape(-1, d).astype(dt),
            "w_gu": jnp.concatenate([p["w_gate"], p["w_up"]], axis=1).astype(dt),
            "w_down": p["w_down"].astype(dt),
        }
        if cfg.attention_bias:
            w["bqkv"] = jnp.concatenate([p[n].reshape(-1) for n in ("bq", "bk", "bv")]).astype(dt)
        out.append(w)
    return tuple(out)


def decode_caches(cache: llama.KVCache) -> DecodeCaches:
    """Stacked cache (k, v [L, R, S, Hkv, Dh]) → per-layer heads-major buffers [R, Hkv, S, Dh]."""
    layers = range(cache.k.shape[0])
    ks = tuple(_constrain(jnp.swapaxes(cache.k[i], 1, 2)) for i in layers)
    vs = tuple(_constrain(jnp.swapaxes(cache.v[i], 1, 2)) for i in layers)
    return DecodeCaches(ks, vs, cache.lengths)


def decode_step(
    params: dict, weights: tuple, cfg: ModelConfig, tokens: jax.Array, caches: DecodeCaches
) -> tuple[jax.Array, DecodeCaches]:
    """Append one token per row (tokens int32[R]) at slot caches.lengths[r] and run it.

    Returns float32 next-token logits [R, V] and the caches with the new keys/values written and
    lengths + 1. Rows must have room (lengths[r] < S); writes past the end are dropped.
    """
    s = caches.k[0].shape[2]
    lengths = caches.lengths
    mask = (jnp.arange(s)[None, :] <= lengths[:, None])[:, None]  # [R, 1, S]
    rope = llama.rope_tables(cfg, lengths)  # [R, 1, Dh/2]: position of the new token
    x = llama.embed(params, cfg, tokens[:, None])[:, 0]  # [R, D]
    new_k, new_v = [], []
    for w, k, v in zip(weights, caches.k, caches.v):
        x, k, v = _layer(cfg, w, x, k, v, lengths, rope, mask)
        new_k.append(_constrain(k))
        new_v.append(_constrain(v))
    hidden = llama.rms_norm(x, params["final_norm"], cfg.rms_norm_eps)
    return llama.lm_logits(params, cfg, hidden), DecodeCaches(tuple(new_k), tuple(new_v), lengths + 1)


def _constrain(x: jax.Array) -> jax.Array:
    return nn.with_logical_constraint(x, LAYER_CACHE_AXES)


def _layer(cfg, w, x, k_cache, v_cache, lengths, rope, mask):
    """One pre-norm decoder layer on one token per row. x [R, D]; caches [R, Hkv, S, Dh]."""
    r = x.shape[0]
    nh, nk, dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    h = llama.rms_norm(x, w["attn_norm"], cfg.rms_norm_eps)
    qkv = h @ w["wqkv"]  # [R, (H+2K)*Dh]
    if cfg.attention_bias:
        qkv = qkv + w["bqkv"]
    q, k, v = jnp.split(qkv.reshape(r, nh + 2 * nk, dh), [nh, nh + nk], axis=1)
    q, k = llama.apply_rope(q, rope), llama.apply_rope(k, rope)
    rows = jnp.arange(r)
    k_cache = k_cache.at[rows, :, lengths].set(k.astype(k_cache.dtype), mode="drop")
    v_cache = v_cache.at[rows, :, lengths].set(v.astype(v_cache.dtype), mode="drop")
    attn = llama.attention(q[:, None], k_cache, v_cache, mask)  # [R, 1, H, Dh]
    x = x + attn.reshape(r, nh * dh) @ w["wo"]
    h = llama.rms_norm(x, w["mlp_norm"], cfg.rms_norm_eps)
    gate, up = jnp.split(h @ w["w_gu"], 2, axis=-1)  # [R, F] each
    return x + (jax.nn.silu(gate) * up) @ w["w_down"], k_cache, v_cache
