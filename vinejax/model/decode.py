"""Prefill and decoding one token per row: the model side of a sampler's loop.

Same math as `llama.forward_cached`, built from the same pieces (`embed_rows`, `sublayer`,
`project_qk`, `layer_rope_tables`, `window_mask`, `glu`, `attention_probs`, `final_norm`,
`head_logits`), but laid out for a cheap step. `decode_weights` fuses each layer's q/k/v and
gate/up projections into single matrices, once per sampling call, and lays every decode weight
out *stationary*: its output dim split over all the axes that shard parameters (`decode_out`),
its input dim whole. A matmul gathers its few input rows over those axes (`decode_rows`) and
sends the output rows back to their devices (`batch`), so no device ever holds a whole weight
(training's FSDP layout splits the input dim, which a loop would gather whole, once per call).
The caches are one heads-major buffer per layer ([R, Hkv, S, Dh], `DecodeCaches`), rows over
`batch`, so the step has no per-layer slices, transposes or cache copies. `prefill` runs
right-padded prompts causally (`llama.attention`, i.e. `jax.nn.dot_product_attention`) and
writes these caches directly; `decode_caches` converts a stacked `llama.KVCache` instead. Layers
are unrolled in Python, so compile time grows with depth (`llama.forward_cached` inside a loop is
the scanned alternative), and each layer's window and RoPE are static.

    weights = decode_weights(params, cfg)              # once per sampling call
    logits, caches = prefill(params, weights, cfg, prompts, prompt_lens, room)
    logits, caches = decode_step(params, weights, cfg, tokens, caches)   # per step
    logits = head(weights, cfg, hidden)                # hidden rows from elsewhere
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from vinejax.model import llama, lora
from vinejax.model.config import ModelConfig

LAYER_CACHE_AXES = ("batch", "kv_heads", "length", "head_dim")  # logical axes of one layer's k / v


STATIONARY_AXES = (None, "decode_out")  # a decode weight [in, out]: the output dim split, the input whole


class DecodeCaches(NamedTuple):
    """Per-layer caches. k, v: tuples of L arrays [R, Hkv, S, Dh]; lengths: int32[R] valid slots."""

    k: tuple
    v: tuple
    lengths: jax.Array


class DecodeWeights(NamedTuple):
    """The weights a decode loop reads, in the compute dtype and laid out stationary.

    layers: one dict per layer (`decode_weights`); embed: [V, D] (D split); head: [D, V] (V split).
    """

    layers: tuple
    embed: jax.Array
    head: jax.Array


def decode_weights(params: dict, cfg: ModelConfig) -> DecodeWeights:
    """Decode weights in the compute dtype. Each layer's dict: wqkv [D, (H+2Hkv)*Dh],
    wo [H*Dh, D], w_gu [D, 2F], w_down [F, D], the layer's norms as they are (`*_norm`), and (with
    attention_bias) bqkv [(H+2Hkv)*Dh]. LoRA adapters in `params` are merged in
    (`lora.merged_leaf`): decoding then costs what the base model costs."""
    d, dt = cfg.hidden_size, cfg.compute_dtype
    out = []
    for i in range(cfg.num_layers):
        p = jax.tree.map(lambda a: a[i], params["layers"])
        m = lambda name: lora.merged_leaf(cfg, p, name, dt)  # W, or W + s·A·B with an adapter
        w = {name: a for name, a in p.items() if name.endswith("norm")}
        w |= {
            "wqkv": _stationary(jnp.concatenate([m(n).reshape(d, -1) for n in ("wq", "wk", "wv")], axis=1)),
            "wo": _stationary(m("wo").reshape(-1, d)),
            "w_gu": _stationary(jnp.concatenate([m("w_gate"), m("w_up")], axis=1)),
            "w_down": _stationary(m("w_down")),
        }
        if cfg.attention_bias:
            w["bqkv"] = jnp.concatenate([p[n].reshape(-1) for n in ("bq", "bk", "bv")]).astype(dt)
        out.append(w)
    table = _stationary(params["embed"].astype(dt))
    return DecodeWeights(tuple(out), table, _stationary(llama.lm_head(params, cfg).astype(dt)))


def head(weights: DecodeWeights, cfg: ModelConfig, hidden: jax.Array) -> jax.Array:
    """`llama.lm_logits` with the decode weights: final-normed hidden [R, D] → float32 logits [R, V]."""
    return _from_shards(llama.head_logits(cfg, _gather_rows(hidden), weights.head))


def prefill(
    params: dict, weights: DecodeWeights, cfg: ModelConfig, tokens: jax.Array, lengths: jax.Array, room: int
) -> tuple[jax.Array, DecodeCaches]:
    """Run right-padded prompts tokens int32[B, T] (lengths int32[B] >= 1) into fresh caches of
    `room` slots (slots past T are zero; prompt columns past `room` are dropped).

    Returns float32 next-token logits [B, V] at each row's last prompt token and the caches
    (lengths = `lengths`).
    """
    b, t = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    ropes, _ = llama.layer_rope_tables(cfg, positions)  # [kinds, B, T, 1, rope_dim/2]
    causal = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
    x = _from_shards(llama.embed_rows(cfg, weights.embed, _gather_rows(tokens)))  # [B, T, D]

    def to_cache(a):  # [B, T, Hkv, Dh] -> [B, Hkv, room, Dh]
        a = jnp.swapaxes(a[:, :room], 1, 2)
        return _constrain(jnp.pad(a, ((0, 0), (0, 0), (0, room - a.shape[2]), (0, 0))))

    ks, vs = [], []
    for i, w in enumerate(weights.layers):
        window = cfg.layer_windows[i]
        mask = llama.window_mask(causal, positions, positions, window) if window else None

        def attend(q, k, v, mask=mask):
            ks.append(to_cache(k))
            vs.append(to_cache(v))
            return llama.attention(q, k, v, mask, causal=mask is None, implementation=cfg.attention_impl,
                                   scale=cfg.attn_scale, softcap=cfg.attn_softcap)

        x = _layer(cfg, w, x, _rope(ropes, cfg, i), attend)
    last = jnp.take_along_axis(x, (lengths - 1)[:, None, None], axis=1)[:, 0]  # [B, D]
    hidden = llama.final_norm(params, cfg, last)
    return head(weights, cfg, hidden), DecodeCaches(tuple(ks), tuple(vs), lengths.astype(jnp.int32))


def decode_caches(cache: llama.KVCache) -> DecodeCaches:
    """Stacked cache (k, v [L, R, S, Hkv, Dh]) → per-layer heads-major buffers [R, Hkv, S, Dh]."""
    layers = range(cache.k.shape[0])
    ks = tuple(_constrain(jnp.swapaxes(cache.k[i], 1, 2)) for i in layers)
    vs = tuple(_constrain(jnp.swapaxes(cache.v[i], 1, 2)) for i in layers)
    return DecodeCaches(ks, vs, cache.lengths)


def decode_step(
    params: dict, weights: DecodeWeights, cfg: ModelConfig, tokens: jax.Array, caches: DecodeCaches
) -> tuple[jax.Array, DecodeCaches]:
    """Append one token per row (tokens int32[R]) at slot caches.lengths[r] and run it.

    Returns float32 next-token logits [R, V] and the caches with the new keys/values written and
    lengths + 1. Rows must have room (lengths[r] < S); writes past the end are dropped.
    """
    s = caches.k[0].shape[2]
    lengths = caches.lengths
    slots = jnp.arange(s)[None]  # [1, S]: slot index == position
    causal = (slots <= lengths[:, None])[:, None]  # [R, 1, S]
    ropes, _ = llama.layer_rope_tables(cfg, lengths[:, None])  # [kinds, R, 1, 1, rope_dim/2]
    x = _from_shards(llama.embed_rows(cfg, weights.embed, _gather_rows(tokens[:, None])))  # [R, 1, D]
    rows = jnp.arange(tokens.shape[0])
    new_k, new_v = [], []
    for i, (w, k_cache, v_cache) in enumerate(zip(weights.layers, caches.k, caches.v)):
        mask = llama.window_mask(causal, lengths[:, None], slots, cfg.layer_windows[i])[:, 0]  # [R, S]

        def attend(q, k, v, k_cache=k_cache, v_cache=v_cache, mask=mask):
            k_cache = _constrain(k_cache.at[rows, :, lengths].set(k[:, 0].astype(k_cache.dtype), mode="drop"))
            v_cache = _constrain(v_cache.at[rows, :, lengths].set(v[:, 0].astype(v_cache.dtype), mode="drop"))
            new_k.append(k_cache)
            new_v.append(v_cache)
            return cache_attention(q, k_cache, v_cache, mask, cfg.attn_scale, cfg.attn_softcap)

        x = _layer(cfg, w, x, _rope(ropes, cfg, i), attend)
    hidden = llama.final_norm(params, cfg, x[:, 0])
    return head(weights, cfg, hidden), DecodeCaches(tuple(new_k), tuple(new_v), lengths + 1)


def cache_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: Optional[float] = None,
                    softcap: Optional[float] = None) -> jax.Array:
    """Attention of one new token per row over heads-major caches (decode's own core: it reads
    the caches in place, where `llama.attention` wants slots before heads).

    q: [R, 1, H, Dh]; k, v: [R, Hkv, S, Dh]; mask: bool[R, S]; scale: score factor (default
    Dh**-0.5); softcap: scores → softcap·tanh(scores/softcap) before the mask. Scores and softmax
    in float32 (masked scores as in `jax.nn.dot_product_attention`). Returns [R, 1, H, Dh] in q's dtype.
    """
    r, _, h, dh = q.shape
    kv = k.shape[1]
    q = q.reshape(r, kv, h // kv, dh)
    scores = jnp.einsum("rkgd,rksd->rkgs", q, k.astype(q.dtype), preferred_element_type=jnp.float32)
    probs = llama.attention_probs(scores, mask[:, None, None], scale or 1.0 / math.sqrt(dh), softcap).astype(q.dtype)
    return jnp.einsum("rkgs,rksd->rkgd", probs, v.astype(q.dtype)).reshape(r, 1, h, dh)


def _constrain(x: jax.Array) -> jax.Array:
    return nn.with_logical_constraint(x, LAYER_CACHE_AXES)


def _stationary(w: jax.Array) -> jax.Array:
    return nn.with_logical_constraint(w, STATIONARY_AXES)


def _gather_rows(x: jax.Array) -> jax.Array:
    """x [R, ...] with its rows split over `data` only (gathered over the parameter axes)."""
    return nn.with_logical_constraint(x, ("decode_rows",) + (None,) * (x.ndim - 1))


def _from_shards(y: jax.Array) -> jax.Array:
    """y [R, ..., out] computed from stationary weights → the same, rows over `batch`. y is first
    pinned split as the weights' output (rows over `data` only), else XLA may gather the weight
    to make y in its final layout directly; then gathered and sliced (XLA has no direct move from
    the one split to the other on every mesh, and warns when it improvises one)."""
    rest = (None,) * (y.ndim - 2)
    y = nn.with_logical_constraint(y, ("decode_rows",) + rest + ("decode_out",))
    y = nn.with_logical_constraint(y, ("decode_rows",) + rest + (None,))  # gathered: a slice of it is local
    return nn.with_logical_constraint(y, ("batch",) + rest + (None,))


def _matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [R, T, in] @ stationary w [in, out] → [R, T, out], rows over `batch`: the rows travel
    to the weight's shards and back, the weight stays."""
    return _from_shards(_gather_rows(x) @ w)


def _rope(ropes: llama.Rope, cfg: ModelConfig, layer: int) -> llama.Rope:
    """Layer `layer`'s tables out of `llama.layer_rope_tables` (picked statically here)."""
    i = cfg.rope_kinds.index(cfg.layer_ropes[layer])
    return llama.Rope(ropes.cos[i], ropes.sin[i])


def _layer(cfg, w, x, rope, attend):
    """One decoder layer on x [R, T, D] with fused stationary weights `w`; `attend(q, k, v)` (q
    [R, T, H, Dh], k/v [R, T, Hkv, Dh] after q/k norm and RoPE) stores k/v and returns attention
    [R, T, H, Dh]."""
    r, t = x.shape[:2]
    nh, nk, dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

    def attn(h):
        qkv = _matmul(h, w["wqkv"])  # [R, T, (H+2K)*Dh]
        if cfg.attention_bias:
            qkv = qkv + w["bqkv"]
        q, k, v = jnp.split(qkv.reshape(r, t, nh + 2 * nk, dh), [nh, nh + nk], axis=2)
        q, k = llama.project_qk(cfg, w, q, k, rope)
        return _matmul(attend(q, k, v).reshape(r, t, nh * dh), w["wo"])

    def mlp(h):
        gate, up = jnp.split(_matmul(h, w["w_gu"]), 2, axis=-1)  # [R, T, F] each
        return _matmul(llama.glu(cfg, gate, up), w["w_down"])

    return llama.sublayer(cfg, w, "mlp", llama.sublayer(cfg, w, "attn", x, attn), mlp)
