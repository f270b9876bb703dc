"""Llama-family decoder (Llama 2/3, TinyLlama, DeepSeekMath, Qwen2, Mistral) as pure functions.

Parameters are a plain pytree (see `param_specs`); decoder layers are stacked on a leading
`layers` axis and run with `lax.scan`, so compile time does not grow with depth. Two entry points:

* `forward`: a whole batch of sequences, no cache (training, scoring). Padding on either side
  and packed segments are handled through `segment_ids` + explicit `positions`.
* `forward_cached`: appends tokens to a `KVCache` (prefill, decode, MC continuations).

`vinejax.model.decode.decode_step` is the one-token-per-row step of samplers, built from the
same public pieces: `embed`, `rms_norm`, `rope_tables` + `apply_rope`, `attention`, `lm_logits`.

KV-cache layout: row b holds its sequence contiguously from slot 0, slot index == position;
`lengths[b]` slots are valid. Truncating a cached prefix is just lowering `lengths`.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from vinejax.model.config import ModelConfig

CACHE_AXES = ("layers", "batch", "length", "kv_heads", "head_dim")  # logical axes of KVCache.k / .v


class KVCache(NamedTuple):
    """Keys/values of every layer. k, v: [L, B, S, Hkv, Dh]; lengths: int32[B] valid slots."""

    k: jax.Array
    v: jax.Array
    lengths: jax.Array


def init_cache(cfg: ModelConfig, batch: int, max_len: int) -> KVCache:
    """An empty cache for `batch` rows of up to `max_len` tokens, in the compute dtype."""
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    zeros = jnp.zeros(shape, cfg.compute_dtype)
    return KVCache(zeros, zeros, jnp.zeros((batch,), jnp.int32))


def constrain_cache(cache: KVCache) -> KVCache:
    """Shard a cache's rows over the data axes (a no-op outside logical-axis rules)."""
    return KVCache(
        nn.with_logical_constraint(cache.k, CACHE_AXES),
        nn.with_logical_constraint(cache.v, CACHE_AXES),
        nn.with_logical_constraint(cache.lengths, ("batch",)),
    )


# ----------------------------------------------------------------------------- parameters


def param_specs(cfg: ModelConfig) -> dict:
    """{name: (shape, logical axes)} for every parameter; the single source of the layout."""
    L, D, F, V = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    H, K, Dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    layers = {
        "attn_norm": ((L, D), ("layers", "norm")),
        "wq": ((L, D, H, Dh), ("layers", "embed", "heads", "head_dim")),
        "wk": ((L, D, K, Dh), ("layers", "embed", "kv_heads", "head_dim")),
        "wv": ((L, D, K, Dh), ("layers", "embed", "kv_heads", "head_dim")),
        "wo": ((L, H, Dh, D), ("layers", "heads", "head_dim", "embed")),
        "mlp_norm": ((L, D), ("layers", "norm")),
        "w_gate": ((L, D, F), ("layers", "embed", "mlp")),
        "w_up": ((L, D, F), ("layers", "embed", "mlp")),
        "w_down": ((L, F, D), ("layers", "mlp", "embed")),
    }
    if cfg.attention_bias:
        layers["bq"] = ((L, H, Dh), ("layers", "heads", "head_dim"))
        layers["bk"] = ((L, K, Dh), ("layers", "kv_heads", "head_dim"))
        layers["bv"] = ((L, K, Dh), ("layers", "kv_heads", "head_dim"))
    specs = {
        "embed": ((V, D), ("vocab", "embed")),
        "layers": layers,
        "final_norm": ((D,), ("norm",)),
    }
    if not cfg.tie_word_embeddings:
        specs["lm_head"] = ((D, V), ("embed", "vocab"))
    if cfg.value_head:
        specs["value_head"] = {"w": ((D,), ("embed",)), "b": ((), ())}
    return specs


def _is_spec(x) -> bool:
    return isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], tuple)


def param_logical_axes(cfg: ModelConfig) -> dict:
    """The params pytree with each leaf replaced by its tuple of logical axis names."""
    return jax.tree.map(lambda s: s[1], param_specs(cfg), is_leaf=_is_spec)


def param_shapes(cfg: ModelConfig) -> dict:
    """The params pytree of `jax.ShapeDtypeStruct`s (for sharding and loading)."""
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s[0], cfg.weight_dtype), param_specs(cfg), is_leaf=_is_spec
    )


def init_params(cfg: ModelConfig, rng: jax.Array, std: float = 0.02) -> dict:
    """Random parameters: N(0, std) matrices, unit norms, zero biases; value head N(0, 1/sqrt(D+1))."""
    leaves, treedef = jax.tree.flatten_with_path(param_specs(cfg), is_leaf=_is_spec)
    keys = jax.random.split(rng, len(leaves))
    out = []
    for (path, (shape, _)), key in zip(leaves, keys):
        name = jax.tree_util.keystr(path)
        if "norm" in name:
            x = jnp.ones(shape)
        elif "['b" in name or name.endswith("['b']"):
            x = jnp.zeros(shape)
        elif "value_head" in name:
            x = jax.random.normal(key, shape) / math.sqrt(cfg.hidden_size + 1)
        else:
            x = jax.random.normal(key, shape) * std
        out.append(x.astype(cfg.weight_dtype))
    return jax.tree.unflatten(treedef, out)


def init_value_head(cfg: ModelConfig, rng: jax.Array) -> dict:
    """A fresh scalar value head: w ~ N(0, 1/sqrt(D+1)), b = 0 (the paper's PPO critic init)."""
    w = jax.random.normal(rng, (cfg.hidden_size,)) / math.sqrt(cfg.hidden_size + 1)
    return {"w": w.astype(cfg.weight_dtype), "b": jnp.zeros((), cfg.weight_dtype)}


# ----------------------------------------------------------------------------- building blocks


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """x / rms(x) * weight, normalised in float32 and cast back to x's dtype."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (y * weight.astype(jnp.float32)).astype(x.dtype)


def rope_inv_freq(cfg: ModelConfig) -> jax.Array:
    """Inverse RoPE frequencies [Dh/2], with Llama-3 style `rope_scaling` when configured."""
    dh = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, dh, 2, dtype=jnp.float32) / dh))
    scaling = cfg.rope_scaling_dict
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind in (None, "default"):
        return inv
    if kind == "linear":
        return inv / scaling["factor"]
    if kind != "llama3":
        raise ValueError(f"unsupported rope_scaling type {kind!r}; supported: default, linear, llama3")
    factor = scaling["factor"]
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_len = scaling.get("original_max_position_embeddings", 8192)
    wavelen = 2 * math.pi / inv
    low_wavelen, high_wavelen = old_len / low, old_len / high
    smooth = (old_len / wavelen - low) / (high - low)
    mid = (1 - smooth) * inv / factor + smooth * inv
    return jnp.where(wavelen > low_wavelen, inv / factor, jnp.where(wavelen < high_wavelen, inv, mid))


class Rope(NamedTuple):
    """RoPE tables of some positions [...]: cos, sin f32[..., 1, Dh/2] (the 1 broadcasts over heads)."""

    cos: jax.Array
    sin: jax.Array


def rope_tables(cfg: ModelConfig, positions: jax.Array) -> Rope:
    """cos/sin of positions (int[...]) times the inverse frequencies; computed once for all layers."""
    angles = positions[..., None].astype(jnp.float32) * rope_inv_freq(cfg)  # [..., Dh/2]
    return Rope(jnp.cos(angles)[..., None, :], jnp.sin(angles)[..., None, :])


def apply_rope(x: jax.Array, rope: Rope) -> jax.Array:
    """Rotate-half RoPE (HF convention) of x [..., H, Dh] with `rope_tables` of its positions [...]."""
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    out = jnp.concatenate([x1 * rope.cos - x2 * rope.sin, x2 * rope.cos + x1 * rope.sin], axis=-1)
    return out.astype(x.dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Optional[jax.Array] = None,
              causal: bool = False, implementation: str = "auto") -> jax.Array:
    """Grouped-query softmax attention of `forward` and `forward_cached` (`jax.nn.dot_product_attention`).

    q: [B, T, H, Dh]; k, v: [B, S, Hkv, Dh]; mask: optional bool[B, T, S] (True = attend);
    causal: query t sees keys 0..t (T == S). Scores and softmax in float32; returns [B, T, H, Dh]
    in q's dtype. `implementation` "auto" picks cuDNN flash attention where it applies (a CUDA
    GPU, bf16/fp16, causal without an explicit mask, head_dim a multiple of 8 up to 128) and XLA
    elsewhere (CPU, TPU, masks); "xla" / "cudnn" force one.
    """
    k, v = k.astype(q.dtype), v.astype(q.dtype)
    if implementation == "auto":
        implementation = "cudnn" if cudnn_attention_applies(q, mask) else "xla"
    return jax.nn.dot_product_attention(q, k, v, mask=None if mask is None else mask[:, None],
                                        is_causal=causal, implementation=implementation)


def cudnn_attention_applies(q: jax.Array, mask: Optional[jax.Array]) -> bool:
    """Whether `attention(implementation="auto")` uses cuDNN flash attention for q [B, T, H, Dh]."""
    dh = q.shape[-1]
    return (mask is None and q.dtype in (jnp.bfloat16, jnp.float16) and dh % 8 == 0 and dh <= 128
            and jax.default_backend() == "gpu" and "cuda" in jax.devices()[0].client.platform_version.lower())


def _write_rows(cache: jax.Array, layer: jax.Array, new: jax.Array, starts: jax.Array) -> jax.Array:
    """Scatter new ([B, T, Hkv, Dh]) into cache [L, B, S, Hkv, Dh] at layer `layer`, slots starts[b]+t.

    A scatter into the whole carried buffer (not a per-layer copy) so XLA updates it in place.
    """
    b, t = new.shape[:2]
    rows = jnp.arange(b)[:, None]
    slots = starts[:, None] + jnp.arange(t)[None]
    return cache.at[layer, rows, slots].set(new.astype(cache.dtype), mode="drop")


def _layer(cfg, rope, p, x, mask, kv=None, layer=None, starts=None):
    """One pre-norm decoder layer. x: [B,T,D]; rope: tables of the tokens' positions [B, T];
    mask: bool[B, T, S] or None (causal); kv: optional whole caches ([L,B,S,Hkv,Dh] x 2)."""
    h = rms_norm(x, p["attn_norm"], cfg.rms_norm_eps)
    q = jnp.einsum("btd,dhk->bthk", h, p["wq"].astype(h.dtype))
    k = jnp.einsum("btd,dhk->bthk", h, p["wk"].astype(h.dtype))
    v = jnp.einsum("btd,dhk->bthk", h, p["wv"].astype(h.dtype))
    if cfg.attention_bias:
        q, k, v = q + p["bq"].astype(h.dtype), k + p["bk"].astype(h.dtype), v + p["bv"].astype(h.dtype)
    q = nn.with_logical_constraint(apply_rope(q, rope), ("batch", "length", "heads", "head_dim"))
    k = apply_rope(k, rope)
    if kv is not None:
        kv = (_write_rows(kv[0], layer, k, starts), _write_rows(kv[1], layer, v, starts))
        attn = attention(q, kv[0][layer], kv[1][layer], mask, implementation=cfg.attention_impl)
    else:  # no cache: causal self-attention over the tokens, within segments when given a mask
        attn = attention(q, k, v, mask, causal=mask is None, implementation=cfg.attention_impl)
    x = x + jnp.einsum("bthk,hkd->btd", attn, p["wo"].astype(attn.dtype))
    h = rms_norm(x, p["mlp_norm"], cfg.rms_norm_eps)
    gate = jnp.einsum("btd,df->btf", h, p["w_gate"].astype(h.dtype))
    up = jnp.einsum("btd,df->btf", h, p["w_up"].astype(h.dtype))
    act = nn.with_logical_constraint(jax.nn.silu(gate) * up, ("batch", "length", "mlp"))
    x = x + jnp.einsum("btf,fd->btd", act, p["w_down"].astype(act.dtype))
    return nn.with_logical_constraint(x, ("batch", "length", "embed")), kv


def lm_logits(params: dict, cfg: ModelConfig, hidden: jax.Array) -> jax.Array:
    """LM head on final-normed hidden [..., D] → float32 logits [..., V] (tied or separate head)."""
    w = params["embed"].T if cfg.tie_word_embeddings else params["lm_head"]
    return jnp.einsum("...d,dv->...v", hidden, w.astype(hidden.dtype), preferred_element_type=jnp.float32)


def value_head(params: dict, hidden: jax.Array) -> jax.Array:
    """Scalar value per position from final-normed hidden states [B,T,D] → float32 [B,T]."""
    w, b = params["value_head"]["w"], params["value_head"]["b"]
    return jnp.einsum("btd,d->bt", hidden.astype(jnp.float32), w.astype(jnp.float32)) + b


def embed(params: dict, cfg: ModelConfig, tokens: jax.Array) -> jax.Array:
    """Token embeddings in the compute dtype. tokens: int[B, T] → [B, T, D]."""
    x = jnp.take(params["embed"], tokens, axis=0).astype(cfg.compute_dtype)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


def _maybe_remat(cfg: ModelConfig, fn):
    if not cfg.remat:
        return fn
    return jax.checkpoint(fn, policy=jax.checkpoint_policies.nothing_saveable)


# ----------------------------------------------------------------------------- entry points


def forward(
    params: dict,
    cfg: ModelConfig,
    tokens: jax.Array,
    positions: Optional[jax.Array] = None,
    segment_ids: Optional[jax.Array] = None,
) -> tuple[jax.Array, jax.Array]:
    """Full causal forward without a cache.

    tokens: int[B, T]; positions: int[B, T] (default 0..T-1; give them for left padding);
    segment_ids: int[B, T], 0 = padding, tokens attend only within their own segment
    (default: one segment; right padding needs none, as no real token attends to a later one).
    Returns float32 logits [B, T, V] and final-normed hidden [B, T, D].
    Without segment_ids attention is plain causal (cuDNN flash attention on GPUs, see `attention`).
    """
    b, t = tokens.shape
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    mask = None
    if segment_ids is not None:
        causal = jnp.tril(jnp.ones((t, t), bool))
        same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
        mask = causal[None] & same  # [B, T, T]
    rope = rope_tables(cfg, positions)

    def body(x, p):
        x, _ = _layer(cfg, rope, p, x, mask)
        return x, None

    x, _ = jax.lax.scan(_maybe_remat(cfg, body), embed(params, cfg, tokens), params["layers"])
    hidden = rms_norm(x, params["final_norm"], cfg.rms_norm_eps)
    return lm_logits(params, cfg, hidden), hidden


def forward_cached(
    params: dict,
    cfg: ModelConfig,
    tokens: jax.Array,
    cache: KVCache,
    new_lengths: Optional[jax.Array] = None,
) -> tuple[jax.Array, jax.Array, KVCache]:
    """Append tokens [B, T] to each row at slot `cache.lengths[b]` and run them causally.

    Row b's new tokens take positions lengths[b] .. lengths[b]+T-1 and see every earlier slot.
    The returned cache has lengths `new_lengths` (default lengths + T; pass the true lengths when
    the new tokens are right-padded, e.g. a prefill of prompts of different lengths).
    Returns float32 logits [B, T, V], final-normed hidden [B, T, D] and the updated cache.
    """
    b, t = tokens.shape
    s = cache.k.shape[2]
    starts = cache.lengths
    positions = starts[:, None] + jnp.arange(t)[None]  # [B, T]
    mask = jnp.arange(s)[None, None, :] <= positions[:, :, None]  # [B, T, S]
    rope = rope_tables(cfg, positions)

    def body(carry, xs):
        x, k, v = carry
        p, layer = xs
        x, (k, v) = _layer(cfg, rope, p, x, mask, (k, v), layer, starts)
        return (x, k, v), None

    layer_ids = jnp.arange(cfg.num_layers)
    carry = (embed(params, cfg, tokens), cache.k, cache.v)
    (x, k, v), _ = jax.lax.scan(body, carry, (params["layers"], layer_ids))
    hidden = rms_norm(x, params["final_norm"], cfg.rms_norm_eps)
    lengths = starts + t if new_lengths is None else new_lengths.astype(jnp.int32)
    return lm_logits(params, cfg, hidden), hidden, KVCache(k, v, lengths)
