"""Sampling configuration, token sampling and the decode loop shared by `generate` and MC.

The model side of a step lives in `vinejax.model.decode`; this module owns what is sampled and
when a row stops.

Conventions
-----------
* A decode batch has R rows; every row has its own PRNG key (`keys`, a typed key array [R]) and
  the token at step i is drawn with `fold_in(keys[r], i)`, so a row's sample does not depend on
  which other rows share its batch, on bucket padding or on chunking.
* `logprobs` are log_softmax(logits / temperature) at the chosen token, i.e. under the sampling
  temperature *before* top-k/top-p filtering (what the PPO ratio needs). Greedy decoding uses
  temperature 1 for the log-probs when `temperature` is 0.
* A row stops at an EOS id (kept in the response), at the token that completes a stop (kept:
  a token-id stop sequence of `SamplingConfig.stop_sequences`, or a stop string of a text
  `stops.StopTable`, matched within the response), or when it has written its budget
  `min(budget[r], max_new_tokens)` tokens. Later columns hold `pad_id` and log-prob 0.
  `stops.cut_at_stop` removes a stop string from a stopped response on the host.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from vinejax.model import decode as model_decode
from vinejax.model import llama
from vinejax.model.config import ModelConfig
from vinejax.sampling.stops import STOPPED, decode_automata

FINISH_NONE, FINISH_EOS, FINISH_STOP, FINISH_LENGTH = 0, 1, 2, 3
FINISH_REASONS = ("none", "eos", "stop", "length")  # name of each finish_reason code
SAMPLE_BLOCK = 256  # classes per block of the two-level inverse-CDF sampler (`categorical`)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Static (hashable) sampling parameters.

    temperature > 0 unless greedy; top_p in (0, 1] (1 = off); top_k >= 0 (0 = off; applied before
    top_p, as in HF); eos_ids: token ids that end a row; stop_sequences: token-id sequences that end
    a row once fully generated (for stop *strings* pass a `stops.stop_automaton` table to
    `generate` / `continue_from_prefixes` instead); pad_id fills the columns after a row's end.
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


class GenerationOutput(NamedTuple):
    """Responses of R rows (`generate`: prompts × num_samples, sample-major within a prompt).

    tokens: int32[R, N] response tokens, pad_id after the end (N = max_new_tokens);
    logprobs: f32[R, N] log_softmax(logits / T) of each token (0 on padding);
    lengths: int32[R] response lengths (EOS / stop tokens included);
    finish_reason: int32[R] codes into `FINISH_REASONS` (eos, stop, length);
    steps: decode-loop iterations run (for efficiency statistics).
    """

    tokens: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    finish_reason: jax.Array
    steps: jax.Array


class Rows(NamedTuple):
    """The rows a decode loop writes: keys, typed PRNG keys [R] (row r draws its token at column
    i with fold_in(keys[r], i)); budget, int32[R] max new tokens per row (capped at
    `max_new_tokens`; 0 = an inactive row)."""

    keys: jax.Array
    budget: jax.Array


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


def scaled_logits(logits: jax.Array, scfg: SamplingConfig) -> jax.Array:
    """logits / T (T = 1 when greedy with temperature 0). [R, V] float32."""
    t = scfg.temperature if scfg.temperature > 0 else 1.0
    return logits.astype(jnp.float32) / t


def filter_logits(scaled: jax.Array, scfg: SamplingConfig) -> jax.Array:
    """Top-k then top-p (nucleus) filtering of temperature-scaled logits [R, V]; removed → -inf.

    top-k keeps the tokens whose logit is at least the k-th largest; top-p keeps the smallest set
    of most likely tokens whose probability reaches top_p (the token that crosses the threshold
    is kept; ties with the last kept logit are kept too). Both thresholds are found by bisection
    (`logit_threshold`): O(V) work per row per pass, no sort.
    """
    neg = jnp.asarray(-jnp.inf, scaled.dtype)
    if scfg.top_k and scfg.top_k < scaled.shape[-1]:
        kth = logit_threshold(scaled, jnp.ones_like(scaled), jnp.float32(scfg.top_k))
        scaled = jnp.where(scaled < kth, neg, scaled)
    if scfg.top_p < 1.0:
        w = jnp.exp(scaled - jnp.max(scaled, axis=-1, keepdims=True))  # [R, V] unnormalised probs
        thresh = logit_threshold(scaled, w, scfg.top_p * w.sum(-1, keepdims=True))
        scaled = jnp.where(scaled < thresh, neg, scaled)
    return scaled


def _order_key(x: jax.Array) -> jax.Array:
    """int32 keys that sort like the float32 values x (finite or ±inf)."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
    return jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)


def _from_order_key(k: jax.Array) -> jax.Array:
    return jax.lax.bitcast_convert_type(jnp.where(k < 0, k ^ jnp.int32(0x7FFFFFFF), k), jnp.float32)


def logit_threshold(z: jax.Array, w: jax.Array, target: jax.Array) -> jax.Array:
    """Smallest logit value t of each row with sum(w[z > t]) < target: f32[R, 1].

    z f32[R, V] (-inf = removed); w >= 0 [R, V] weights (0 where z is -inf); target [R, 1] or
    scalar, 0 < target <= sum(w). With w = 1 and target k, t is the k-th largest logit; with w the
    probabilities and target top_p, t is the smallest logit the nucleus keeps. Bisection over the
    float32 order (32 passes of a masked sum), exact.
    """
    target = jnp.broadcast_to(jnp.asarray(target, jnp.float32), z.shape[:-1] + (1,))
    keys = _order_key(z)
    finite_min = jnp.min(jnp.where(jnp.isfinite(z), keys, jnp.int32(2**31 - 1)), axis=-1, keepdims=True)
    lo = finite_min - 1  # sum(w[z > lo]) = sum(w) >= target: not a threshold
    hi = jnp.max(keys, axis=-1, keepdims=True)  # sum(w[z > max]) = 0 < target: a threshold

    def halve(_, bounds):
        lo, hi = bounds
        mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # floor((lo + hi) / 2) without overflow
        ok = jnp.sum(jnp.where(keys > mid, w, 0.0), axis=-1, keepdims=True) < target
        return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)

    _, hi = jax.lax.fori_loop(0, 32, halve, (lo, hi))
    return _from_order_key(hi)


def categorical(logits: jax.Array, u: jax.Array) -> jax.Array:
    """Draw one index per row from softmax(logits) by inverse CDF in two levels: a block of
    `SAMPLE_BLOCK` classes, then a class within it. Exact up to float32 rounding of the sums.

    logits f32[R, V] (-inf = never drawn; a finite entry per row); u f32[R, 2] uniforms in
    [0, 1), one per level. Returns int32[R]. Work is O(V) per row, no [R, V] noise.
    """
    r, v = logits.shape
    blk = min(SAMPLE_BLOCK, v)
    nb = -(-v // blk)
    top = jnp.max(logits, axis=-1, keepdims=True)[:, :, None]  # [R, 1, 1]
    x = logits if nb * blk == v else jnp.pad(logits, ((0, 0), (0, nb * blk - v)), constant_values=-jnp.inf)
    x = x.reshape(r, nb, blk)
    block = _inverse_cdf(jnp.exp(x - top).sum(-1), u[:, 0])  # [R]
    inner = jnp.exp(jnp.take_along_axis(x, block[:, None, None], axis=1) - top)[:, 0]  # [R, blk]
    return block * blk + _inverse_cdf(inner, u[:, 1])


def _inverse_cdf(w: jax.Array, u: jax.Array) -> jax.Array:
    """First index i with cumsum(w)[i] > u * sum(w) and w[i] > 0 (the last positive index if
    rounding leaves none). w f32[R, n] >= 0 with a positive entry per row; u f32[R]. int32[R]."""
    n = w.shape[-1]
    c = jnp.cumsum(w, axis=-1)
    idx = jnp.arange(n, dtype=jnp.int32)[None]
    pos = w > 0
    first = jnp.min(jnp.where((c > (u * c[:, -1])[:, None]) & pos, idx, n), axis=-1)
    last = jnp.max(jnp.where(pos, idx, -1), axis=-1)
    return jnp.minimum(first, last).astype(jnp.int32)


def sample_tokens(logits: jax.Array, keys: jax.Array, step, scfg: SamplingConfig):
    """Draw one token per row. logits [R, V] f32; keys: typed keys [R]; step: int scalar or int[R]
    (each row's own column, e.g. in `refill.decode_rows`).

    Returns (tokens int32[R], logprobs f32[R] = log_softmax(logits / T)[token]).
    A draw is an exact categorical sample of the filtered distribution (`categorical`) with two
    uniforms from the key fold_in(keys[r], step[r]).
    """
    scaled = scaled_logits(logits, scfg)  # [R, V]
    if scfg.greedy:
        tok = jnp.argmax(scaled, axis=-1).astype(jnp.int32)
    else:
        steps = jnp.broadcast_to(jnp.asarray(step), keys.shape)
        u = jax.vmap(lambda k, i: jax.random.uniform(jax.random.fold_in(k, i), (2,)))(keys, steps)  # [R, 2]
        tok = categorical(filter_logits(scaled, scfg), u)
    lse = jax.nn.logsumexp(scaled, axis=-1)
    return tok, jnp.take_along_axis(scaled, tok[:, None], axis=-1)[:, 0] - lse


def decode(
    params: dict,
    cfg: ModelConfig,
    scfg: SamplingConfig,
    cache,
    logits0: jax.Array,
    rows: Rows,
    stop_table: Optional[jax.Array] = None,
    weights: Optional[model_decode.DecodeWeights] = None,
) -> GenerationOutput:
    """Decode loop (call inside jit). Row r continues its cached sequence (cache.lengths[r] slots).

    cache: a stacked `llama.KVCache`, or (with `scfg.unroll_layers`) per-layer
    `model.decode.DecodeCaches` as `model.decode.prefill` returns them; weights: optional
    `model.decode.decode_weights(params, cfg)` when the caller already has them.

    logits0: f32[R, V] next-token logits of every row (from prefill or the trajectory pass);
    rows: the rows' keys and budgets (`Rows`); stop_table: optional int32[S, V'] (V' >= V) the
    `next_state` of a `stops.StopTable`. The cache needs lengths[r] + max_new_tokens slots.
    A `lax.while_loop` runs one step per iteration (`model.decode.decode_step`, or
    `llama.forward_cached` when `scfg.unroll_layers` is off; sample; stop checks) and exits as
    soon as every row is done.
    """
    r, v = logits0.shape
    n = scfg.max_new_tokens
    pad = jnp.int32(scfg.pad_id)
    keys, budget = rows.keys, jnp.minimum(rows.budget.astype(jnp.int32), n)
    eos = jnp.asarray(scfg.eos_ids or (-1,), jnp.int32)
    tables = [jnp.asarray(t, jnp.int32) for t in decode_automata(scfg.stop_sequences, stop_table, v)]

    def advance(i, logits, st):
        """Sample column i for live rows and update the stop state. st = (toks, lps, count, finish, states)."""
        toks, lps, count, finish, states = st
        live = finish == FINISH_NONE
        tok, lp = sample_tokens(logits, keys, i, scfg)
        tok = jnp.where(live, tok, pad)
        toks = jax.lax.dynamic_update_slice(toks, tok[:, None], (0, i))
        lps = jax.lax.dynamic_update_slice(lps, jnp.where(live, lp, 0.0)[:, None], (0, i))
        count = count + live.astype(jnp.int32)
        nxt = tuple(table[state, tok] for table, state in zip(tables, states))  # [R] each
        hit_stop = jnp.zeros((r,), bool)
        for x in nxt:
            hit_stop |= x == STOPPED
        states = tuple(jnp.maximum(x, 0) for x in nxt)
        hit_eos = jnp.any(tok[:, None] == eos[None], axis=1)
        new = jnp.where(
            hit_eos, FINISH_EOS, jnp.where(hit_stop, FINISH_STOP, jnp.where(count >= budget, FINISH_LENGTH, FINISH_NONE))
        )
        finish = jnp.where(live, new, finish)
        return tok, (toks, lps, count, finish, states)

    st = (
        jnp.full((r, n), pad, jnp.int32),
        jnp.zeros((r, n), jnp.float32),
        jnp.zeros((r,), jnp.int32),
        jnp.where(budget > 0, FINISH_NONE, -1).astype(jnp.int32),  # -1: inactive from the start
        tuple(jnp.zeros((r,), jnp.int32) for _ in tables),  # stop automaton states: 0 = start
    )
    tok, st = advance(0, logits0, st)

    def cond(carry):
        i, _, _, st = carry
        return (i < n) & jnp.any(st[3] == FINISH_NONE)

    if scfg.unroll_layers:
        # Weights fused and split per layer, caches laid out per layer, once outside the loop.
        if weights is None:
            weights = model_decode.decode_weights(params, cfg)
        kv = cache if isinstance(cache, model_decode.DecodeCaches) else model_decode.decode_caches(cache)
        step_fn = lambda tok, kv: model_decode.decode_step(params, weights, cfg, tok, kv)
    else:
        if isinstance(cache, model_decode.DecodeCaches):
            raise ValueError("per-layer DecodeCaches need SamplingConfig.unroll_layers=True")
        kv = llama.constrain_cache(cache)

        def step_fn(tok, kv):
            logits, _, kv = llama.forward_cached(params, cfg, tok[:, None], kv)
            return logits[:, 0], llama.constrain_cache(kv)

    def body(carry):
        i, tok, kv, st = carry
        logits, kv = step_fn(tok, kv)
        tok, st = advance(i, logits, st)
        return i + 1, tok, kv, st

    steps, _, _, st = jax.lax.while_loop(cond, body, (jnp.int32(1), tok, kv, st))
    toks, lps, count, finish, _ = st
    return GenerationOutput(toks, lps, count, jnp.maximum(finish, FINISH_NONE), steps)
