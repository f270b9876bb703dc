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
from vinejax.sampling.stops import STOPPED, token_sequence_table

FINISH_NONE, FINISH_EOS, FINISH_STOP, FINISH_LENGTH = 0, 1, 2, 3
FINISH_REASONS = ("none", "eos", "stop", "length")  # name of each finish_reason code


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
    """Draw one token per row. logits [R, V] f32; keys: typed keys [R]; step: int scalar or int[R]
    (each row's own column, e.g. in `refill.decode_rows`).

    Returns (tokens int32[R], logprobs f32[R] = log_softmax(logits / T)[token]).
    Sampling is Gumbel-max over the filtered distribution with the key fold_in(keys[r], step[r]).
    """
    scaled = scaled_logits(logits, scfg)
    logp_all = jax.nn.log_softmax(scaled, axis=-1)
    if scfg.greedy:
        tok = jnp.argmax(scaled, axis=-1)
    else:
        v = scaled.shape[-1]
        steps = jnp.broadcast_to(jnp.asarray(step), keys.shape)
        gumbel = jax.vmap(lambda k, i: jax.random.gumbel(jax.random.fold_in(k, i), (v,)))(keys, steps)
        tok = jnp.argmax(filter_logits(scaled, scfg) + gumbel, axis=-1)
    tok = tok.astype(jnp.int32)
    return tok, jnp.take_along_axis(logp_all, tok[:, None], axis=-1)[:, 0]


def decode(
    params: dict,
    cfg: ModelConfig,
    scfg: SamplingConfig,
    cache: llama.KVCache,
    logits0: jax.Array,
    keys: jax.Array,
    budget: jax.Array,
    stop_table: Optional[jax.Array] = None,
) -> GenerationOutput:
    """Decode loop (call inside jit). Row r continues its cached sequence (cache.lengths[r] slots).

    logits0: f32[R, V] next-token logits of every row (from prefill or the trajectory pass);
    keys: typed PRNG keys [R]; budget: int32[R] max new tokens per row (capped at
    scfg.max_new_tokens; 0 = inactive row); stop_table: optional int32[S, V'] (V' >= V) the
    `next_state` of a `stops.StopTable`. The cache needs lengths[r] + max_new_tokens slots.
    A `lax.while_loop` runs one step per iteration (`model.decode.decode_step`, or
    `llama.forward_cached` when `scfg.unroll_layers` is off; sample; stop checks) and exits as
    soon as every row is done.
    """
    r, v = logits0.shape
    n = scfg.max_new_tokens
    pad = jnp.int32(scfg.pad_id)
    budget = jnp.minimum(budget.astype(jnp.int32), n)
    eos = jnp.asarray(scfg.eos_ids or (-1,), jnp.int32)
    tables = []
    if scfg.stop_sequences:  # token-id sequences: a constant automaton, built at trace time
        tables.append(jnp.asarray(token_sequence_table(scfg.stop_sequences, v).next_state))
    if stop_table is not None:
        if stop_table.ndim != 2 or stop_table.shape[1] < v:
            raise ValueError(f"stop table of shape {stop_table.shape} does not cover the model's {v} token ids")
        tables.append(stop_table.astype(jnp.int32))

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
        # Weights fused and split per layer, caches re-laid out per layer, once outside the loop.
        weights = model_decode.decode_weights(params, cfg)
        kv = model_decode.decode_caches(cache)
        step_fn = lambda tok, kv: model_decode.decode_step(params, weights, cfg, tok, kv)
    else:
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
