"""Continuous batching: a decode loop whose slots take the next waiting row when theirs finishes.

`decode_rows` decodes a queue of N rows with R slots (R << N) inside one `lax.while_loop`. Each
iteration runs one model step for every slot, samples, applies the stop rules of
`core.decode`, and hands every slot whose row has just finished (up to `refills_per_step` of
them) the next rows of the queue: their start state (cache rows, prefix length and next-token
logits) comes from a caller-supplied `fetch(rows)` traced inside the loop, e.g. rows gathered
from the trajectory cache (`mc.continue_from_prefixes`). A refilled slot samples its first token
in the same iteration, so apart from the queue's tail every slot-step writes a useful token.

Sampling is the same as `core.decode`: row q draws its token at column i with fold_in(keys[q], i)
from the same logits, so a row's output does not depend on the number of slots, the queue order
or which rows share an iteration (up to float summation order of the attention over a larger
cache room).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from vinejax.model import decode as model_decode
from vinejax.model import llama
from vinejax.model.config import ModelConfig
from vinejax.sampling.core import (
    FINISH_EOS,
    FINISH_LENGTH,
    FINISH_NONE,
    FINISH_STOP,
    GenerationOutput,
    Rows,
    SamplingConfig,
    sample_tokens,
)
from vinejax.sampling.stops import STOPPED, token_sequence_table


class RowStart(NamedTuple):
    """Start state of M rows, what `fetch` returns: k, v [L, M, room, Hkv, Dh] cache rows (slots
    >= lengths are ignored), lengths int32[M] cached tokens, logits0 f32[M, V] next-token logits."""

    k: jax.Array
    v: jax.Array
    lengths: jax.Array
    logits0: jax.Array


class RefillPlan(NamedTuple):
    """Static shape of a refill loop: `slots` rows decoded at once, `room` cache slots per row
    (>= every row's prefix + budget), at most `refills_per_step` slots refilled per iteration."""

    slots: int
    room: int
    refills_per_step: int


class _Slots(NamedTuple):
    row: jax.Array      # int32[R] queue index of the slot's row; N = none
    col: jax.Array      # int32[R] tokens the row has written
    finish: jax.Array   # int32[R] FINISH_NONE while live; a finish code, or -1 when empty
    states: tuple       # stop automaton states int32[R], one per table
    tok: jax.Array      # int32[R] last sampled token (next step's input)


class _Out(NamedTuple):
    tokens: jax.Array    # int32[N, n]
    logprobs: jax.Array  # f32[N, n]
    lengths: jax.Array   # int32[N]
    finish: jax.Array    # int32[N]


def decode_rows(
    params: dict,
    cfg: ModelConfig,
    scfg: SamplingConfig,
    fetch: Callable[[jax.Array], RowStart],
    queue: Rows,
    num_rows,
    plan: RefillPlan,
    stop_table: Optional[jax.Array] = None,
) -> GenerationOutput:
    """Decode queue rows 0..num_rows-1 with `plan.slots` slots (call inside jit).

    fetch(rows int32[M]) -> RowStart of those queue rows (rows are clamped to [0, N)); queue: the
    N rows' keys and budgets (`core.Rows`; budgets >= 1); num_rows: int32 scalar <= N (rows
    beyond it are padding and never start); plan: slots, cache room and refills per iteration
    (`RefillPlan`); stop_table: optional int32[S, V'] `stops.StopTable.next_state`.
    Rows start in queue order. Returns GenerationOutput over the N queue rows (tokens/logprobs
    [N, max_new_tokens], lengths, finish_reason [N]; rows never started have length 0 and
    finish FINISH_NONE) with steps = loop iterations (slot-steps = slots * steps).
    """
    keys, n_all = queue.keys, queue.budget.shape[0]
    n = scfg.max_new_tokens
    r, room, refills_per_step = plan
    pad = jnp.int32(scfg.pad_id)
    budget = jnp.minimum(queue.budget.astype(jnp.int32), n)
    num_rows = jnp.asarray(num_rows, jnp.int32)
    eos = jnp.asarray(scfg.eos_ids or (-1,), jnp.int32)
    tables = []
    v = cfg.vocab_size
    if scfg.stop_sequences:
        tables.append(jnp.asarray(token_sequence_table(scfg.stop_sequences, v).next_state))
    if stop_table is not None:
        if stop_table.ndim != 2 or stop_table.shape[1] < v:
            raise ValueError(f"stop table of shape {stop_table.shape} does not cover the model's {v} token ids")
        tables.append(stop_table.astype(jnp.int32))

    def advance(logits, rows, col, finish, states, out: _Out):
        """Sample the next token of the live rows among `rows` (int32[M] queue indices) and write
        it at column `col`; returns (tok, col, finish, states, out)."""
        live = finish == FINISH_NONE
        safe = jnp.minimum(rows, n_all - 1)
        tok, lp = sample_tokens(logits, keys[safe], col, scfg)
        tok = jnp.where(live, tok, pad)
        at = jnp.where(live, rows, n_all)  # n_all: dropped
        c = jnp.minimum(col, n - 1)
        out = out._replace(tokens=out.tokens.at[at, c].set(tok, mode="drop"),
                           logprobs=out.logprobs.at[at, c].set(lp, mode="drop"))
        col = col + live.astype(jnp.int32)
        nxt = tuple(table[state, tok] for table, state in zip(tables, states))
        hit_stop = jnp.zeros(tok.shape, bool)
        for x in nxt:
            hit_stop |= x == STOPPED
        states = tuple(jnp.maximum(x, 0) for x in nxt)
        hit_eos = jnp.any(tok[:, None] == eos[None], axis=1)
        new = jnp.where(hit_eos, FINISH_EOS,
                        jnp.where(hit_stop, FINISH_STOP, jnp.where(col >= budget[safe], FINISH_LENGTH, FINISH_NONE)))
        finish = jnp.where(live, new, finish)
        done = jnp.where(live & (finish != FINISH_NONE), rows, n_all)
        out = out._replace(lengths=out.lengths.at[done].set(col, mode="drop"),
                           finish=out.finish.at[done].set(finish, mode="drop"))
        return tok, col, finish, states, out

    def refill(m, next_row, sl: _Slots, kv, out: _Out):
        """Give up to m free slots the next m queue rows and sample their first tokens."""
        free = sl.finish != FINISH_NONE
        slot = jnp.nonzero(free, size=m, fill_value=r)[0]  # [m] ascending free slots, r = none
        rows = next_row + jnp.arange(m, dtype=jnp.int32)
        ok = (slot < r) & (rows < num_rows)
        slot = jnp.where(ok, slot, r)  # r: writes dropped
        rows = jnp.where(ok, rows, n_all)
        start = fetch(jnp.minimum(rows, n_all - 1))
        kv = write_slots(kv, slot, start)
        fin0 = jnp.where(ok & (budget[jnp.minimum(rows, n_all - 1)] > 0), FINISH_NONE, -1).astype(jnp.int32)
        st0 = tuple(jnp.zeros((m,), jnp.int32) for _ in tables)
        tok, col, fin, states, out = advance(start.logits0, rows, jnp.zeros((m,), jnp.int32), fin0, st0, out)
        put = lambda a, x: a.at[slot].set(x, mode="drop")
        sl = _Slots(put(sl.row, rows), put(sl.col, col), put(sl.finish, fin),
                    tuple(put(a, x) for a, x in zip(sl.states, states)), put(sl.tok, tok))
        return next_row + ok.sum(dtype=jnp.int32), sl, kv, out

    if scfg.unroll_layers:
        weights = model_decode.decode_weights(params, cfg)
        kv = model_decode.decode_caches(llama.init_cache(cfg, r, room))
        step_fn = lambda tok, kv: model_decode.decode_step(params, weights, cfg, tok, kv)

        def write_slots(kv, slot, start: RowStart):
            put = lambda a, x: a.at[slot].set(jnp.swapaxes(x, 1, 2).astype(a.dtype), mode="drop")
            return model_decode.DecodeCaches(tuple(put(a, x) for a, x in zip(kv.k, start.k)),
                                             tuple(put(a, x) for a, x in zip(kv.v, start.v)),
                                             kv.lengths.at[slot].set(start.lengths, mode="drop"))
    else:
        kv = llama.constrain_cache(llama.init_cache(cfg, r, room))

        def step_fn(tok, kv):
            logits, _, kv = llama.forward_cached(params, cfg, tok[:, None], kv)
            return logits[:, 0], llama.constrain_cache(kv)

        def write_slots(kv, slot, start: RowStart):
            put = lambda a, x: a.at[:, slot].set(x.astype(a.dtype), mode="drop")
            return llama.KVCache(put(kv.k, start.k), put(kv.v, start.v),
                                 kv.lengths.at[slot].set(start.lengths, mode="drop"))

    out = _Out(jnp.full((n_all, n), pad, jnp.int32), jnp.zeros((n_all, n), jnp.float32),
               jnp.zeros((n_all,), jnp.int32), jnp.zeros((n_all,), jnp.int32))
    empty = jnp.full((r,), -1, jnp.int32)
    sl = _Slots(jnp.full((r,), n_all, jnp.int32), jnp.zeros((r,), jnp.int32), empty,
                tuple(jnp.zeros((r,), jnp.int32) for _ in tables), jnp.full((r,), pad, jnp.int32))
    next_row, sl, kv, out = refill(r, jnp.int32(0), sl, kv, out)  # fill every slot

    def cond(carry):
        _, next_row, sl, _, _ = carry
        return jnp.any(sl.finish == FINISH_NONE) | (next_row < num_rows)

    def body(carry):
        i, next_row, sl, kv, out = carry
        logits, kv = step_fn(sl.tok, kv)
        tok, col, fin, states, out = advance(logits, sl.row, sl.col, sl.finish, sl.states, out)
        sl = _Slots(sl.row, col, fin, states, tok)
        # refill only when a slot is free and rows wait (a conditional: measured cheaper than
        # fetching refills_per_step rows every step)
        want = jnp.any(sl.finish != FINISH_NONE) & (next_row < num_rows)
        next_row, sl, kv, out = jax.lax.cond(want, lambda a: refill(refills_per_step, *a), lambda a: a,
                                             (next_row, sl, kv, out))
        return i + 1, next_row, sl, kv, out

    steps, _, _, _, out = jax.lax.while_loop(cond, body, (jnp.int32(1), next_row, sl, kv, out))
    return GenerationOutput(out.tokens, out.logprobs, out.lengths, jnp.maximum(out.finish, FINISH_NONE), steps)
