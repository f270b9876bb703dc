"""Sampling configuration, token sampling and the jitted decode loop shared by `generate` and MC.

Conventions
-----------
* A decode batch has R rows; every row has its own PRNG key (`keys`, a typed key array [R]) and
  the token at step i is drawn with `fold_in(keys[r], i)`, so a row's sample does not depend on
  which other rows share its batch, on bucket padding or on chunking.
* `logprobs` are log_softmax(logits / temperature) at the chosen token, i.e. under the sampling
  temperature *before* top-k/top-p filtering (what the PPO ratio needs). Greedy decoding uses
  temperature 1 for the log-probs when `temperature` is 0.
* A row stops at an EOS id (kept in the response), at the last token of a stop sequence (kept),
  or when it has written its budget `min(budget[r], max_new_tokens)` tokens. Later columns hold
  `pad_id` and log-prob 0.
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from vinejax.model import llama
from vinejax.model.config import ModelConfig

FINISH_NONE, FINISH_EOS, FINISH_STOP, FINISH_LENGTH = 0, 1, 2, 3
FINISH_REASONS = ("none", "eos", "stop", "length")  # name of each finish_reason code
CACHE_AXES = ("layers", "batch", "length", "kv_heads", "head_dim")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Static (hashable) sampling parameters.

    temperature > 0 unless greedy; top_p in (0, 1] (1 = off); top_k >= 0 (0 = off; applied before
    top_p, as in HF); eos_ids: token ids that end a row; stop_sequences: token-id sequences that end
    a row once fully generated; pad_id fills the columns after a row's end.
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    eos_ids: tuple = ()
    stop_sequences: tuple = ()
    pad_id: int = 0
    unroll_layers: bool = True  # decode with per-layer weights/caches (faster; compile grows with depth)

    def __post_init__(self):
        eos = self.eos_ids
        eos = () if eos is None else ((eos,) if isinstance(eos, int) else tuple(int(e) for e in eos))
        object.__setattr__(self, "eos_ids", eos)
        stops = tuple(tuple(int(t) for t in s) for s in (self.stop_sequences or ()))
        if any(len(s) == 0 for s in stops):
            raise ValueError("empty stop sequence")
        object.__setattr__(self, "stop_sequences", stops)
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.greedy and not self.temperature > 0:
            raise ValueError("temperature must be > 0 when sampling (use greedy=True)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def replace(self, **changes) -> "SamplingConfig":
        return dataclasses.replace(self, **changes)


class DecodeResult(NamedTuple):
    """tokens/logprobs [R, N] (N = max_new_tokens), lengths/finish_reason [R], steps: loop iterations."""

    tokens: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    finish_reason: jax.Array
    steps: jax.Array


def bucket(n: int, minimum: int = 8, multiple_of: int = 1) -> int:
    """Round n up to a power of two (>= minimum) below 1024, else to a multiple of 1024; then to
    a multiple of `multiple_of` (the data-parallel size). Keeps the number of compiled shapes small."""
    n = max(int(n), minimum, 1)
    b = 1 << (n - 1).bit_length() if n <= 1024 else -(-n // 1024) * 1024
    return -(-b // multiple_of) * multiple_of


def cache_room(need: int, granule: int = 32) -> int:
    """Cache slots for a batch needing `need` slots: rounded up to a multiple of `granule`
    (finer than powers of two: decode attention reads every slot of every row each step)."""
    return -(-max(int(need), 1) // granule) * granule


def data_parallel_size() -> int:
    """Product of the `data`/`fsdp` axis sizes of the mesh set with `jax.set_mesh` (1 if none)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return 1
    shape = dict(mesh.shape)
    return int(shape.get("data", 1) * shape.get("fsdp", 1))


def lm_logits(params: dict, cfg: ModelConfig, hidden: jax.Array) -> jax.Array:
    """LM head on final-normed hidden [..., D] → float32 logits [..., V]."""
    w = params["embed"].T if cfg.tie_word_embeddings else params["lm_head"]
    return jnp.einsum("...d,dv->...v", hidden, w.astype(hidden.dtype), preferred_element_type=jnp.float32)


def scaled_logits(logits: jax.Array, scfg: SamplingConfig) -> jax.Array:
    """logits / T (T = 1 when greedy with temperature 0). [R, V] float32."""
    t = scfg.temperature if scfg.temperature > 0 else 1.0
    return logits.astype(jnp.float32) / t


def filter_logits(scaled: jax.Array, scfg: SamplingConfig) -> jax.Array:
    """Top-k then top-p (nucleus) filtering of temperature-scaled logits [R, V]; removed → -inf.

    top-p keeps the smallest set of most likely tokens whose probability reaches top_p (the token
    that crosses the threshold is kept; ties with the last kept logit are kept too).
    """
    neg = jnp.asarray(-jnp.inf, scaled.dtype)
    if scfg.top_k and scfg.top_k < scaled.shape[-1]:
        kth = jax.lax.top_k(scaled, scfg.top_k)[0][:, -1:]  # [R, 1]
        scaled = jnp.where(scaled < kth, neg, scaled)
    if scfg.top_p < 1.0:
        srt = jnp.sort(scaled, axis=-1)[:, ::-1]  # descending [R, V]
        probs = jax.nn.softmax(srt, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly before each sorted token
        keep = before < scfg.top_p
        thresh = jnp.min(jnp.where(keep, srt, jnp.inf), axis=-1, keepdims=True)
        scaled = jnp.where(scaled < thresh, neg, scaled)
    return scaled


def sample_tokens(logits: jax.Array, keys: jax.Array, step, scfg: SamplingConfig):
    """Draw one token per row. logits [R, V] f32; keys: typed keys [R]; step: int scalar.

    Returns (tokens int32[R], logprobs f32[R] = log_softmax(logits / T)[token]).
    Sampling is Gumbel-max over the filtered distribution with the key fold_in(keys[r], step).
    """
    scaled = scaled_logits(logits, scfg)
    logp_all = jax.nn.log_softmax(scaled, axis=-1)
    if scfg.greedy:
        tok = jnp.argmax(scaled, axis=-1)
    else:
        v = scaled.shape[-1]
        gumbel = jax.vmap(lambda k: jax.random.gumbel(jax.random.fold_in(k, step), (v,)))(keys)
        tok = jnp.argmax(filter_logits(scaled, scfg) + gumbel, axis=-1)
    tok = tok.astype(jnp.int32)
    return tok, jnp.take_along_axis(logp_all, tok[:, None], axis=-1)[:, 0]


def constrain_cache(cache: llama.KVCache) -> llama.KVCache:
    """Shard a cache's rows over the data axes (no-op outside logical-axis rules)."""
    return llama.KVCache(
        nn.with_logical_constraint(cache.k, CACHE_AXES),
        nn.with_logical_constraint(cache.v, CACHE_AXES),
        nn.with_logical_constraint(cache.lengths, ("batch",)),
    )


def decode(
    params: dict,
    cfg: ModelConfig,
    scfg: SamplingConfig,
    cache: llama.KVCache,
    logits0: jax.Array,
    keys: jax.Array,
    budget: jax.Array,
) -> DecodeResult:
    """Decode loop (call inside jit). Row r continues its cached sequence (cache.lengths[r] slots).

    logits0: f32[R, V] next-token logits of every row (from prefill or the trajectory pass);
    keys: typed PRNG keys [R]; budget: int32[R] max new tokens per row (capped at
    scfg.max_new_tokens; 0 = inactive row). The cache needs lengths[r] + max_new_tokens slots.
    A `lax.while_loop` runs one fused step per iteration (forward of the last token, sample,
    stop checks) and exits as soon as every row is done.
    """
    r = logits0.shape[0]
    n = scfg.max_new_tokens
    pad = jnp.int32(scfg.pad_id)
    budget = jnp.minimum(budget.astype(jnp.int32), n)
    eos = jnp.asarray(scfg.eos_ids or (-1,), jnp.int32)
    stops = scfg.stop_sequences
    m = max((len(s) for s in stops), default=1)

    def advance(i, logits, st):
        """Sample column i for live rows and update stop state. st = (toks, lps, count, finish, tail)."""
        toks, lps, count, finish, tail = st
        live = finish == FINISH_NONE
        tok, lp = sample_tokens(logits, keys, i, scfg)
        tok = jnp.where(live, tok, pad)
        toks = jax.lax.dynamic_update_slice(toks, tok[:, None], (0, i))
        lps = jax.lax.dynamic_update_slice(lps, jnp.where(live, lp, 0.0)[:, None], (0, i))
        count = count + live.astype(jnp.int32)
        tail = jnp.concatenate([tail[:, 1:], tok[:, None]], axis=1)
        hit_stop = jnp.zeros((r,), bool)
        for s in stops:
            hit_stop |= jnp.all(tail[:, m - len(s):] == jnp.asarray(s, jnp.int32)[None], axis=1)
        hit_eos = jnp.any(tok[:, None] == eos[None], axis=1)
        new = jnp.where(
            hit_eos, FINISH_EOS, jnp.where(hit_stop, FINISH_STOP, jnp.where(count >= budget, FINISH_LENGTH, FINISH_NONE))
        )
        finish = jnp.where(live, new, finish)
        return tok, (toks, lps, count, finish, tail)

    st = (
        jnp.full((r, n), pad, jnp.int32),
        jnp.zeros((r, n), jnp.float32),
        jnp.zeros((r,), jnp.int32),
        jnp.where(budget > 0, FINISH_NONE, -1).astype(jnp.int32),  # -1: inactive from the start
        jnp.full((r, m), -1, jnp.int32),
    )
    tok, st = advance(0, logits0, st)

    def cond(carry):
        i, _, _, st = carry
        return (i < n) & jnp.any(st[3] == FINISH_NONE)

    if scfg.unroll_layers:
        # Weights fused and split per layer, caches re-laid out per layer, once outside the loop:
        # the loop body then has no per-step slices, transposes or cache copies.
        layers = _decode_weights(params, cfg)
        kv = _decode_caches(cache, cfg)
        step_fn = lambda tok, kv: _unrolled_step(params, layers, cfg, tok, kv)
    else:
        kv = constrain_cache(cache)

        def step_fn(tok, kv):
            logits, _, kv = llama.forward_cached(params, cfg, tok[:, None], kv)
            return logits[:, 0], constrain_cache(kv)

    def body(carry):
        i, tok, kv, st = carry
        logits, kv = step_fn(tok, kv)
        tok, st = advance(i, logits, st)
        return i + 1, tok, kv, st

    steps, _, _, st = jax.lax.while_loop(cond, body, (jnp.int32(1), tok, kv, st))
    toks, lps, count, finish, _ = st
    return DecodeResult(toks, lps, count, jnp.maximum(finish, FINISH_NONE), steps)


def _decode_weights(params: dict, cfg: ModelConfig) -> list:
    """Per-layer decode weights, fused once per call: wqkv [D, (H+2K)*Dh], wo [H*Dh, D],
    w_gu [D, 2F], w_down [F, D], norms [D] and (with attention_bias) bqkv [(H+2K)*Dh]."""
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
    return out


def _decode_caches(cache: llama.KVCache, cfg: ModelConfig):
    """Stacked cache [L, R, S, K, Dh] → per-layer ([k_l [R, K, S, Dh]] * L, [v_l] * L, lengths[R]).

    Heads before slots, so decode attention reads each layer's cache without a transpose."""
    ks = [jnp.swapaxes(cache.k[i], 1, 2) for i in range(cfg.num_layers)]
    vs = [jnp.swapaxes(cache.v[i], 1, 2) for i in range(cfg.num_layers)]
    return ks, vs, cache.lengths


def _rope_tables(cfg: ModelConfig, lengths: jax.Array):
    """cos, sin f32[R, 1, Dh/2] of position lengths[r] (computed once per step for all layers)."""
    angles = lengths[:, None].astype(jnp.float32) * llama.rope_inv_freq(cfg)  # [R, Dh/2]
    return jnp.cos(angles)[:, None], jnp.sin(angles)[:, None]


def _rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half RoPE of x [R, H, Dh] with cos/sin [R, 1, Dh/2] (same math as `llama.apply_rope`)."""
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def _decode_attention(cfg, w, h, k_cache, v_cache, lengths, rope, mask):
    """Self-attention of one new token per row. h [R, D] normed; caches [R, K, S, Dh];
    mask bool[R, S]. Writes the new k/v at slot lengths[r]; returns (out [R, D], k_cache, v_cache)."""
    r = h.shape[0]
    nh, nk, dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    qkv = h @ w["wqkv"]  # [R, (H+2K)*Dh]
    if cfg.attention_bias:
        qkv = qkv + w["bqkv"]
    q, k, v = jnp.split(qkv.reshape(r, nh + 2 * nk, dh), [nh, nh + nk], axis=1)
    q, k = _rope(q, *rope), _rope(k, *rope)
    rows = jnp.arange(r)
    k_cache = k_cache.at[rows, :, lengths].set(k.astype(k_cache.dtype), mode="drop")
    v_cache = v_cache.at[rows, :, lengths].set(v.astype(v_cache.dtype), mode="drop")
    q = q.reshape(r, nk, nh // nk, dh)  # [R, K, G, Dh]
    scores = jnp.einsum("rkgd,rksd->rkgs", q, k_cache.astype(q.dtype), preferred_element_type=jnp.float32)
    scores = jnp.where(mask[:, None, None], scores / math.sqrt(dh), jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    attn = jnp.einsum("rkgs,rksd->rkgd", probs, v_cache.astype(q.dtype)).reshape(r, nh * dh)
    return attn @ w["wo"], k_cache, v_cache


def _decode_layer(cfg, w, x, k_cache, v_cache, lengths, rope, mask):
    """One pre-norm decoder layer on one token per row. x [R, D] → (x [R, D], k_cache, v_cache)."""
    h = llama.rms_norm(x, w["attn_norm"], cfg.rms_norm_eps)
    attn, k_cache, v_cache = _decode_attention(cfg, w, h, k_cache, v_cache, lengths, rope, mask)
    x = x + attn
    h = llama.rms_norm(x, w["mlp_norm"], cfg.rms_norm_eps)
    gate, up = jnp.split(h @ w["w_gu"], 2, axis=-1)  # [R, F] each
    return x + (jax.nn.silu(gate) * up) @ w["w_down"], k_cache, v_cache


def _unrolled_step(params, layers, cfg, tok, kv):
    """One decode step over per-layer caches. tok int32[R]; kv = ([k_l [R,K,S,Dh]] * L, [v_l], lengths[R]).

    Same math as `llama.forward_cached` on one token, with fused q/k/v and gate/up matmuls and
    RoPE tables and mask computed once per step. Returns (logits f32[R, V], updated kv).
    """
    ks, vs, lengths = kv
    s = ks[0].shape[2]
    mask = jnp.arange(s)[None, :] <= lengths[:, None]  # [R, S]
    rope = _rope_tables(cfg, lengths)
    x = llama._embed(cfg, params, tok[:, None])[:, 0]  # [R, D]
    new_k, new_v = [], []
    for w, k, v in zip(layers, ks, vs):
        x, k, v = _decode_layer(cfg, w, x, k, v, lengths, rope, mask)
        new_k.append(nn.with_logical_constraint(k, ("batch", "kv_heads", "length", "head_dim")))
        new_v.append(nn.with_logical_constraint(v, ("batch", "kv_heads", "length", "head_dim")))
    hidden = llama.rms_norm(x, params["final_norm"], cfg.rms_norm_eps)
    return lm_logits(params, cfg, hidden), (new_k, new_v, lengths + 1)
