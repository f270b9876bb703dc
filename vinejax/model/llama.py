"""The decoder of every supported family (Llama 2/3, TinyLlama, DeepSeekMath, Mistral, Qwen2/3,
Gemma 2/3, OLMo 2, Phi-3, SmolLM3) as pure functions; the families differ only in the switches of
`ModelConfig` (q/k norms, norm layout and offset, sliding windows, soft-capping, RoPE per layer).

Parameters are a plain pytree (see `param_specs`); decoder layers are stacked on a leading
`layers` axis and run with `lax.scan`, so compile time does not grow with depth. Two entry points:

* `forward`: a whole batch of sequences, no cache (training, scoring). Padding on either side
  and packed segments are handled through `segment_ids` + explicit `positions`.
* `forward_cached`: appends tokens to a `KVCache` (prefill, decode, MC continuations).

`vinejax.model.decode.decode_step` is the one-token-per-row step of samplers, built from the
same public pieces: `embed`, `sublayer`, `project_qk`, `layer_rope_tables`, `attention`,
`window_mask`, `glu`, `final_norm`, `lm_logits`.

KV-cache layout: row b holds its sequence contiguously from slot 0, slot index == position;
`lengths[b]` slots are valid. Truncating a cached prefix is just lowering `lengths`. A sliding
layer keeps every slot too and masks the keys older than its window (`window_mask`), so the same
cache serves any continuation point.
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
    norm = ((L, D), ("layers", "norm"))
    layers = {
        "wq": ((L, D, H, Dh), ("layers", "embed", "heads", "head_dim")),
        "wk": ((L, D, K, Dh), ("layers", "embed", "kv_heads", "head_dim")),
        "wv": ((L, D, K, Dh), ("layers", "embed", "kv_heads", "head_dim")),
        "wo": ((L, H, Dh, D), ("layers", "heads", "head_dim", "embed")),
        "w_gate": ((L, D, F), ("layers", "embed", "mlp")),
        "w_up": ((L, D, F), ("layers", "embed", "mlp")),
        "w_down": ((L, F, D), ("layers", "mlp", "embed")),
    }
    if cfg.norm_layout != "post":  # norms before attention / MLP
        layers |= {"attn_norm": norm, "mlp_norm": norm}
    if cfg.norm_layout != "pre":  # norms of the attention / MLP outputs
        layers |= {"post_attn_norm": norm, "post_mlp_norm": norm}
    if cfg.qk_norm == "head":  # one weight over head_dim, shared by the heads
        layers |= {"q_norm": ((L, Dh), ("layers", "norm")), "k_norm": ((L, Dh), ("layers", "norm"))}
    elif cfg.qk_norm == "all":
        layers |= {"q_norm": ((L, H, Dh), ("layers", "heads", "head_dim")),
                   "k_norm": ((L, K, Dh), ("layers", "kv_heads", "head_dim"))}
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
    """Random parameters: N(0, std) matrices, norms that scale by 1, zero biases; value head N(0, 1/sqrt(D+1))."""
    leaves, treedef = jax.tree.flatten_with_path(param_specs(cfg), is_leaf=_is_spec)
    keys = jax.random.split(rng, len(leaves))
    out = []
    for (path, (shape, _)), key in zip(leaves, keys):
        name = jax.tree_util.keystr(path)
        if "norm" in name:
            x = jnp.full(shape, 1.0 - cfg.norm_offset)
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


def rms_norm(x: jax.Array, weight: jax.Array, eps: float, offset: float = 0.0) -> jax.Array:
    """x / rms(x) * (offset + weight), normalised in float32 and cast back to x's dtype."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (y * (offset + weight.astype(jnp.float32))).astype(x.dtype)


def norm(cfg: ModelConfig, x: jax.Array, weight: jax.Array) -> jax.Array:
    """The family's RMSNorm of x [..., D] (its epsilon and weight offset)."""
    return rms_norm(x, weight, cfg.rms_norm_eps, cfg.norm_offset)


def final_norm(params: dict, cfg: ModelConfig, x: jax.Array) -> jax.Array:
    """The norm after the last layer: [..., D] → final-normed hidden (the LM and value heads' input)."""
    return norm(cfg, x, params["final_norm"])


def rope_inv_freq(cfg: ModelConfig, kind: str = "global") -> jax.Array:
    """Inverse RoPE frequencies [rope_dim/2] of the "global" RoPE (`rope_theta`, with Llama-3 /
    linear `rope_scaling` when configured) or the "local" one of sliding layers (`rope_local_theta`)."""
    dh = cfg.rope_dim
    theta = cfg.rope_local_theta if kind == "local" else cfg.rope_theta
    inv = 1.0 / (theta ** (jnp.arange(0, dh, 2, dtype=jnp.float32) / dh))
    scaling = cfg.rope_scaling_dict if kind == "global" else {}
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
    """RoPE tables of some positions [...]: cos, sin f32[..., 1, rope_dim/2] (the 1 broadcasts over heads)."""

    cos: jax.Array
    sin: jax.Array


def rope_tables(cfg: ModelConfig, positions: jax.Array, kind: str = "global") -> Rope:
    """cos/sin of positions (int[...]) times the inverse frequencies of RoPE `kind` ("none": the
    identity rotation, cos 1 and sin 0); computed once for all layers."""
    angles = positions[..., None].astype(jnp.float32) * rope_inv_freq(cfg, kind)  # [..., rope_dim/2]
    if kind == "none":
        return Rope(jnp.ones_like(angles)[..., None, :], jnp.zeros_like(angles)[..., None, :])
    return Rope(jnp.cos(angles)[..., None, :], jnp.sin(angles)[..., None, :])


def layer_rope_tables(cfg: ModelConfig, positions: jax.Array) -> tuple[Rope, jax.Array]:
    """The RoPE tables of every kind the layers use, stacked on a leading axis, and each layer's
    index into them int32[L] (`ModelConfig.rope_kinds`, `layer_ropes`): one table for most families."""
    tables = [rope_tables(cfg, positions, kind) for kind in cfg.rope_kinds]
    stacked = Rope(jnp.stack([t.cos for t in tables]), jnp.stack([t.sin for t in tables]))
    return stacked, jnp.asarray([cfg.rope_kinds.index(k) for k in cfg.layer_ropes], jnp.int32)


def apply_rope(x: jax.Array, rope: Rope) -> jax.Array:
    """Rotate-half RoPE (HF convention) of x [..., H, Dh] with `rope_tables` of its positions [...];
    tables narrower than Dh/2 rotate only the leading dims (partial rotary)."""
    r = 2 * rope.cos.shape[-1]
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32[..., :r], 2, axis=-1)
    out = jnp.concatenate([x1 * rope.cos - x2 * rope.sin, x2 * rope.cos + x1 * rope.sin, x32[..., r:]], axis=-1)
    return out.astype(x.dtype)


def project_qk(cfg: ModelConfig, p: dict, q: jax.Array, k: jax.Array, rope: Rope) -> tuple[jax.Array, jax.Array]:
    """The family's q/k norm (`cfg.qk_norm`) then RoPE of projected q [..., H, Dh] and k [..., Hkv, Dh]."""
    if cfg.qk_norm == "head":
        q, k = norm(cfg, q, p["q_norm"]), norm(cfg, k, p["k_norm"])
    elif cfg.qk_norm == "all":  # over the heads and head_dim of a token together
        over_heads = lambda x, w: norm(cfg, x.reshape(*x.shape[:-2], -1), w.reshape(-1)).reshape(x.shape)
        q, k = over_heads(q, p["q_norm"]), over_heads(k, p["k_norm"])
    return apply_rope(q, rope), apply_rope(k, rope)


def glu(cfg: ModelConfig, gate: jax.Array, up: jax.Array) -> jax.Array:
    """The gated MLP activation act(gate) * up: SwiGLU, or GeGLU with tanh-approximated GELU."""
    act = jax.nn.silu(gate) if cfg.hidden_act == "silu" else jax.nn.gelu(gate, approximate=True)
    return act * up


def sublayer(cfg: ModelConfig, p: dict, name: str, x: jax.Array, fn) -> jax.Array:
    """x + fn(x) with the family's norms around fn: `{name}_norm` before it and `post_{name}_norm`
    after it, each where p holds it (`cfg.norm_layout`). name: "attn" or "mlp"."""
    h = norm(cfg, x, p[f"{name}_norm"]) if f"{name}_norm" in p else x
    out = fn(h)
    if f"post_{name}_norm" in p:
        out = norm(cfg, out, p[f"post_{name}_norm"])
    return x + out


def window_mask(mask: jax.Array, q_pos: jax.Array, k_pos: jax.Array, window) -> jax.Array:
    """`mask` bool[B, T, S] limited to keys fewer than `window` positions before their query
    (q_pos int[B, T], k_pos int[B or 1, S]; window int, traced or not, 0 = no limit)."""
    near = q_pos[:, :, None] - k_pos[:, None, :] < window
    return mask & ((window <= 0) | near)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Optional[jax.Array] = None,
              causal: bool = False, implementation: str = "auto", scale: Optional[float] = None,
              softcap: Optional[float] = None) -> jax.Array:
    """Grouped-query softmax attention of `forward` and `forward_cached` (`jax.nn.dot_product_attention`).

    q: [B, T, H, Dh]; k, v: [B, S, Hkv, Dh]; mask: optional bool[B, T, S] (True = attend);
    causal: query t sees keys 0..t (T == S); scale: score factor (default Dh**-0.5); softcap:
    scores → softcap·tanh(scores/softcap) before the mask (Gemma 2; computed by `capped_attention`).
    Scores and softmax in float32; returns [B, T, H, Dh] in q's dtype. `implementation` "auto"
    picks cuDNN flash attention where it applies (a CUDA GPU, bf16/fp16, causal without an
    explicit mask, head_dim a multiple of 8 up to 128) and XLA elsewhere (CPU, TPU, masks);
    "xla" / "cudnn" force one.
    """
    k, v = k.astype(q.dtype), v.astype(q.dtype)
    if softcap is not None:
        if mask is None:
            t = q.shape[1]
            mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (q.shape[0], t, t))
        return capped_attention(q, k, v, mask, scale or 1.0 / math.sqrt(q.shape[-1]), softcap)
    if implementation == "auto":
        implementation = "cudnn" if cudnn_attention_applies(q, mask) else "xla"
    return jax.nn.dot_product_attention(q, k, v, mask=None if mask is None else mask[:, None], scale=scale,
                                        is_causal=causal, implementation=implementation)


def capped_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float,
                     softcap: Optional[float]) -> jax.Array:
    """Attention with soft-capped scores: q [B, T, H, Dh], k/v [B, S, Hkv, Dh], mask bool[B, T, S];
    probabilities by `attention_probs`. Returns [B, T, H, Dh] in q's dtype."""
    b, t, h, dh = q.shape
    kv = k.shape[2]
    qg = q.reshape(b, t, kv, h // kv, dh)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32)  # [B, Hkv, G, T, S]
    probs = attention_probs(scores, mask[:, None, None], scale, softcap).astype(q.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, h, dh)


def attention_probs(scores: jax.Array, mask: jax.Array, scale: float, softcap: Optional[float]) -> jax.Array:
    """float32 softmax over the last axis of scores·scale, soft-capped to softcap·tanh(·/softcap)
    when given, then masked (mask broadcasts to scores; the masked score of
    `jax.nn.dot_product_attention`)."""
    scores = scores * scale
    if softcap is not None:
        scores = softcap * jnp.tanh(scores / softcap)
    return jax.nn.softmax(jnp.where(mask, scores, MASKED_SCORE), axis=-1)


MASKED_SCORE = -0.7 * float(jnp.finfo(jnp.float32).max)  # the masked score of jax.nn.dot_product_attention


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


def linear(cfg: ModelConfig, p: dict, name: str, eq: str, x: jax.Array) -> jax.Array:
    """x · p[name] by einsum `eq` (e.g. "btd,dhk->bthk"), in x's dtype; plus the LoRA update
    `cfg.lora.scale`·(x·A)·B where p["lora"] holds an adapter {"a": [*in, r], "b": [r, *out]} of
    `name`, unmerged (training never builds W + s·A·B), its input dropped out (`cfg.lora.dropout`)
    when p holds a dropout key "lora_key"."""
    y = jnp.einsum(eq, x, p[name].astype(x.dtype))
    adapter = p.get("lora", {}).get(name)
    if adapter is None:
        return y
    rate = cfg.lora.dropout
    if rate > 0 and "lora_key" in p:
        key = jax.random.fold_in(p["lora_key"], cfg.lora.leaves.index(name))
        x = jnp.where(jax.random.bernoulli(key, 1.0 - rate, x.shape), x / (1.0 - rate), 0).astype(x.dtype)
    xa = jnp.tensordot(x, adapter["a"].astype(x.dtype), adapter["a"].ndim - 1)  # [..., r]
    return y + (cfg.lora.scale * jnp.tensordot(xa, adapter["b"].astype(x.dtype), 1)).astype(y.dtype)


def _layer(cfg, rope, p, x, mask, kv=None, layer=None, starts=None):
    """One decoder layer. x: [B,T,D]; rope: tables of the tokens' positions [B, T]; mask:
    bool[B, T, S] (this layer's window applied) or None (causal); kv: optional whole caches
    ([L,B,S,Hkv,Dh] x 2)."""

    def attend(h):
        q = linear(cfg, p, "wq", "btd,dhk->bthk", h)
        k = linear(cfg, p, "wk", "btd,dhk->bthk", h)
        v = linear(cfg, p, "wv", "btd,dhk->bthk", h)
        if cfg.attention_bias:
            q, k, v = q + p["bq"].astype(h.dtype), k + p["bk"].astype(h.dtype), v + p["bv"].astype(h.dtype)
        q, k = project_qk(cfg, p, q, k, rope)
        q = nn.with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))
        nonlocal kv
        if kv is not None:  # write this layer's keys/values, then attend over its cache slots
            kv = (_write_rows(kv[0], layer, k, starts), _write_rows(kv[1], layer, v, starts))
            k, v = kv[0][layer], kv[1][layer]
        # without a cache and a mask: plain causal self-attention over the tokens
        attn = attention(q, k, v, mask, causal=mask is None, implementation=cfg.attention_impl,
                         scale=cfg.attn_scale, softcap=cfg.attn_softcap)
        return linear(cfg, p, "wo", "bthk,hkd->btd", attn)

    def mlp(h):
        gate = linear(cfg, p, "w_gate", "btd,df->btf", h)
        up = linear(cfg, p, "w_up", "btd,df->btf", h)
        act = nn.with_logical_constraint(glu(cfg, gate, up), ("batch", "length", "mlp"))
        return linear(cfg, p, "w_down", "btf,fd->btd", act)

    x = sublayer(cfg, p, "mlp", sublayer(cfg, p, "attn", x, attend), mlp)
    return nn.with_logical_constraint(x, ("batch", "length", "embed")), kv


def lm_logits(params: dict, cfg: ModelConfig, hidden: jax.Array) -> jax.Array:
    """LM head on final-normed hidden [..., D] → float32 logits [..., V] (tied or separate head),
    soft-capped to final_softcap·tanh(logits/final_softcap) when the family caps them (Gemma 2):
    every logit a sampler, a loss or an evaluation sees comes from here (`head_logits`)."""
    return head_logits(cfg, hidden, lm_head(params, cfg))


def lm_head(params: dict, cfg: ModelConfig) -> jax.Array:
    """The LM head [D, V]: the embedding's transpose when tied."""
    return params["embed"].T if cfg.tie_word_embeddings else params["lm_head"]


def head_logits(cfg: ModelConfig, hidden: jax.Array, w: jax.Array) -> jax.Array:
    """hidden [..., D] @ head w [D, V] → float32 logits [..., V], soft-capped as the family does."""
    logits = jnp.einsum("...d,dv->...v", hidden, w.astype(hidden.dtype), preferred_element_type=jnp.float32)
    if cfg.final_softcap is not None:
        logits = cfg.final_softcap * jnp.tanh(logits / cfg.final_softcap)
    return logits


def value_head(params: dict, hidden: jax.Array) -> jax.Array:
    """Scalar value per position from final-normed hidden states [B,T,D] → float32 [B,T]."""
    w, b = params["value_head"]["w"], params["value_head"]["b"]
    return jnp.einsum("btd,d->bt", hidden.astype(jnp.float32), w.astype(jnp.float32)) + b


def embed(params: dict, cfg: ModelConfig, tokens: jax.Array) -> jax.Array:
    """Token embeddings in the compute dtype (× √D, rounded to it, when `cfg.embed_scale`).
    tokens: int[B, T] → [B, T, D]."""
    return nn.with_logical_constraint(embed_rows(cfg, params["embed"], tokens), ("batch", "length", "embed"))


def embed_rows(cfg: ModelConfig, table: jax.Array, tokens: jax.Array) -> jax.Array:
    """`embed` with the table [V, D] given and no layout asked for: tokens int[B, T] → [B, T, D]."""
    x = jnp.take(table, tokens, axis=0).astype(cfg.compute_dtype)
    if cfg.embed_scale:
        x = x * jnp.asarray(math.sqrt(cfg.hidden_size), cfg.compute_dtype)
    return x


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
    if segment_ids is not None or cfg.sliding_window:
        mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))  # [B, T, T]
    if segment_ids is not None:
        mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
    ropes, per_layer = _per_layer(cfg, positions)

    def body(x, xs):
        p, rope_id, window = xs
        m = window_mask(mask, positions, positions, window) if cfg.sliding_window else mask
        x, _ = _layer(cfg, _pick(ropes, rope_id), p, x, m)
        return x, None

    x, _ = jax.lax.scan(_maybe_remat(cfg, body), embed(params, cfg, tokens), (params["layers"], *per_layer))
    hidden = final_norm(params, cfg, x)
    return lm_logits(params, cfg, hidden), hidden


def _per_layer(cfg: ModelConfig, positions: jax.Array) -> tuple[Rope, tuple]:
    """The stacked RoPE tables of `positions` [B, T] and the scanned per-layer inputs: each
    layer's table index and window (int32[L] each)."""
    ropes, rope_ids = layer_rope_tables(cfg, positions)
    return ropes, (rope_ids, jnp.asarray(cfg.layer_windows, jnp.int32))


def _pick(ropes: Rope, i: jax.Array) -> Rope:
    return Rope(ropes.cos[i], ropes.sin[i])


def forward_cached(
    params: dict,
    cfg: ModelConfig,
    tokens: jax.Array,
    cache: KVCache,
    new_lengths: Optional[jax.Array] = None,
) -> tuple[jax.Array, jax.Array, KVCache]:
    """Append tokens [B, T] to each row at slot `cache.lengths[b]` and run them causally.

    Row b's new tokens take positions lengths[b] .. lengths[b]+T-1 and see every earlier slot
    (a sliding layer: the last `sliding_window` of them).
    The returned cache has lengths `new_lengths` (default lengths + T; pass the true lengths when
    the new tokens are right-padded, e.g. a prefill of prompts of different lengths).
    Returns float32 logits [B, T, V], final-normed hidden [B, T, D] and the updated cache.
    """
    b, t = tokens.shape
    s = cache.k.shape[2]
    starts = cache.lengths
    positions = starts[:, None] + jnp.arange(t)[None]  # [B, T]
    slots = jnp.arange(s)[None]  # [1, S]: slot index == position
    mask = slots[:, None, :] <= positions[:, :, None]  # [B, T, S]
    ropes, per_layer = _per_layer(cfg, positions)

    def body(carry, xs):
        x, k, v = carry
        p, layer, rope_id, window = xs
        m = window_mask(mask, positions, slots, window) if cfg.sliding_window else mask
        x, (k, v) = _layer(cfg, _pick(ropes, rope_id), p, x, m, (k, v), layer, starts)
        return (x, k, v), None

    layer_ids = jnp.arange(cfg.num_layers)
    carry = (embed(params, cfg, tokens), cache.k, cache.v)
    (x, k, v), _ = jax.lax.scan(body, carry, (params["layers"], layer_ids, *per_layer))
    hidden = final_norm(params, cfg, x)
    lengths = starts + t if new_lengths is None else new_lengths.astype(jnp.int32)
    return lm_logits(params, cfg, hidden), hidden, KVCache(k, v, lengths)
