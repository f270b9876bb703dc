"""Continuous batching: a decode loop whose slots take the next waiting row when theirs finishes,
each device continuing the rows of the cache it holds.

`decode_rows` decodes a queue of N rows with R slots (R << N) in a `lax.while_loop` (one per
width, see the tail below). Each iteration runs one model step for every slot, samples, applies
the stop rules of `core.decode`, and hands slots whose row has just finished the next rows of the
queue: their start state (cache rows, prefix length and next-token logits) comes from a `Source`,
a cache of rows whose prefixes the queue's rows continue (the trajectory pass of MC, or the
prompts' prefill of `generate`).

**Per device.** The source's rows are split over the data axes; the slots and the queue are split
the same way: device d owns slots d·R/dp … and the queue rows d·Nd … that continue source rows it
holds, and a refill copies cache rows from its own block of the source into its own slots
(`jax.shard_map` over the mesh). Nothing gathers the source across devices: memory per device is
the source's shard, R/dp slots and the queue's outputs. The loop runs until every device's queue
is done (its step is one SPMD program over the mesh).

**The tail.** Once every device's queue is empty, the loop goes on with half the slots whenever
each device's live rows fit in half of its own (`RefillPlan.halvings` times at most; the rows
move by a gather on their device, `local_compact`): the last rows no longer decode beside a
full width of finished slots.

Sampling is the same as `core.decode`: row q draws its token at column i with fold_in(keys[q], i)
from the same logits, so a row's output does not depend on the number of slots, the queue order,
the device it runs on or which rows share an iteration (up to float summation order of the
attention over a larger cache room).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from vinejax import sharding
from vinejax.model import decode as model_decode
from vinejax.model import llama
from vinejax.model.config import ModelConfig
from vinejax.sampling.core import (
    FINISH_EOS,
    FINISH_LENGTH,
    FINISH_NONE,
    FINISH_STOP,
    GenerationOutput,
    SamplingConfig,
    sample_tokens,
)
from vinejax.sampling.stops import STOPPED, decode_automata

HIDDEN_AXES = ("batch", "length", "embed")  # logical axes of `Source.hidden`
TAIL_HALVINGS = 2  # `RefillPlan.halvings` by default


class Source(NamedTuple):
    """The cache refilled rows start from: k, v [L, B, T, Hkv, Dh] (rows over the data axes, as
    `llama.constrain_cache` lays them out); hidden [B, T', D] final-normed hidden states, rows
    laid out likewise (a row's first token is drawn from the logits of hidden[row, col])."""

    k: jax.Array
    v: jax.Array
    hidden: jax.Array


class Queue(NamedTuple):
    """N = dp·Nd rows to decode, device-major: rows d·Nd … d·Nd + count[d] − 1 are device d's, in
    the order they start; the rest of its block is padding.

    row int32[N]: the source row each continues, as an index into device d's block of source rows
    (B/dp of them); pos int32[N]: cached prefix length (>= 1); col int32[N]: hidden column of its
    first token's logits; keys: typed PRNG keys [N]; budget int32[N]: max new tokens (>= 1 on
    real rows); count int32[dp].
    """

    row: jax.Array
    pos: jax.Array
    col: jax.Array
    keys: jax.Array
    budget: jax.Array
    count: jax.Array


class RefillPlan(NamedTuple):
    """Static shape of a refill loop: `slots` rows decoded at once over all devices (a multiple of
    the data-parallel size), `room` cache slots per row (>= every row's prefix + budget), at most
    `refills_per_step` slots refilled per device per iteration; `halvings`: once the queue is
    empty, the loop goes on with half the slots whenever every device's live rows fit in half of
    its slots (moved there), at most this many times (the tail of the queue then decodes fewer
    dead slots; the compiled peak memory is unchanged: the loop's cache and a refill's copy
    already exceed it)."""

    slots: int
    room: int
    refills_per_step: int
    halvings: int = TAIL_HALVINGS


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


def _spec(axes, shape):
    mesh = jax.sharding.get_abstract_mesh()
    return sharding.logical_to_spec(axes, shape, mesh)


def _cache_specs(kv):
    """Partition specs of a refill loop's caches (`DecodeCaches` or a stacked `llama.KVCache`),
    rows over the data axes."""
    axes = llama.CACHE_AXES if isinstance(kv, llama.KVCache) else model_decode.LAYER_CACHE_AXES
    return jax.tree.map(lambda a: _spec(axes, a.shape), kv)._replace(lengths=_spec(("batch",), kv.lengths.shape))


def local_refill(kv, source: Source, slot: jax.Array, row: jax.Array, pos: jax.Array, col: jax.Array):
    """Copy source rows into decode slots, on each device from its own block (call inside jit).

    kv: the loop's caches (`model.decode.DecodeCaches`, or a stacked `llama.KVCache`) with R slots;
    slot, row, pos, col int32[dp, m]: device d writes its source row row[d, j] (an index into its
    block) into its slot slot[d, j] (an index into its R/dp slots; >= R/dp: nothing written) with
    pos[d, j] cached tokens. Returns (kv, hidden f32[dp·m, D] = source.hidden[row, col] of each
    pair, device-major).
    """
    stacked = isinstance(kv, llama.KVCache)

    def local(kv, k_src, v_src, hidden, slot, row, pos, col):
        slot, row, pos, col = slot[0], row[0], pos[0], col[0]  # [m] this device's pairs
        room = kv.k.shape[2] if stacked else kv.k[0].shape[2]
        keep = min(room, k_src.shape[2])  # only the source's columns: slots past a row's length are masked
        if stacked:
            put = lambda a, x: a.at[:, slot, :keep].set(x[:, row, :keep].astype(a.dtype), mode="drop")
            kv = llama.KVCache(put(kv.k, k_src), put(kv.v, v_src), kv.lengths.at[slot].set(pos, mode="drop"))
        else:
            # the rows of every layer at once: a per-layer slice of the source would be
            # loop-invariant, and XLA would hoist it out of the decode loop (a copy of the source)
            k_rows, v_rows = (x[:, row, :keep] for x in (k_src, v_src))  # [L, m, keep, Hkv, Dh]

            def put(a, x):  # one layer: x [m, keep, Hkv, Dh] -> rows into slots [R_local, Hkv, room, Dh]
                return a.at[slot, :, :keep].set(jnp.swapaxes(x, 1, 2).astype(a.dtype), mode="drop")

            layers = range(k_src.shape[0])
            kv = model_decode.DecodeCaches(tuple(put(kv.k[i], k_rows[i]) for i in layers),
                                           tuple(put(kv.v[i], v_rows[i]) for i in layers),
                                           kv.lengths.at[slot].set(pos, mode="drop"))
        return kv, hidden[row, col][None]

    args = (kv, source.k, source.v, source.hidden, slot, row, pos, col)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        kv, hidden = local(*args)
    else:
        kv_specs = _cache_specs(kv)
        pair = _spec(("batch", None), slot.shape)
        in_specs = (kv_specs, _spec(llama.CACHE_AXES, source.k.shape), _spec(llama.CACHE_AXES, source.v.shape),
                    _spec(HIDDEN_AXES, source.hidden.shape), pair, pair, pair, pair)
        hidden_spec = jax.sharding.PartitionSpec(pair[0], None, None)
        kv, hidden = jax.shard_map(local, in_specs=in_specs, out_specs=(kv_specs, hidden_spec),
                                   check_vma=False)(*args)
    return kv, hidden.reshape(-1, hidden.shape[-1])


def local_compact(kv, keep: jax.Array):
    """The loop's caches (`model.decode.DecodeCaches`, or a stacked `llama.KVCache`) reduced to the
    slots `keep` int32[dp, h] (indices into each device's own R/dp slots), each device keeping
    its own (call inside jit). Returns caches of dp·h slots, device-major."""
    stacked = isinstance(kv, llama.KVCache)

    def local(kv, keep):
        keep = keep[0]
        if stacked:
            return llama.KVCache(kv.k[:, keep], kv.v[:, keep], kv.lengths[keep])
        return model_decode.DecodeCaches(tuple(a[keep] for a in kv.k), tuple(a[keep] for a in kv.v), kv.lengths[keep])

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return local(kv, keep)
    kv_specs = _cache_specs(kv)
    return jax.shard_map(local, in_specs=(kv_specs, _spec(("batch", None), keep.shape)), out_specs=kv_specs,
                         check_vma=False)(kv, keep)


def decode_rows(
    params: dict,
    cfg: ModelConfig,
    scfg: SamplingConfig,
    source: Source,
    queue: Queue,
    plan: RefillPlan,
    stop_table: Optional[jax.Array] = None,
) -> GenerationOutput:
    """Decode the queue's rows with `plan.slots` slots refilled from `source` (call inside jit).

    queue: the rows, device-major (`Queue`); the data-parallel size dp is len(queue.count) and
    divides plan.slots and the source's rows; stop_table: optional int32[S, V'] (a
    `stops.StopTable.next_state`). Each device starts its rows in queue order. Returns
    GenerationOutput over the N queue rows (tokens/logprobs [N, max_new_tokens], lengths,
    finish_reason [N]; padding rows have length 0 and finish FINISH_NONE) with steps = the
    slot-steps of the loop (the slots of each iteration, summed over iterations; the first fill's
    tokens count one iteration).
    """
    keys, n_all, dp = queue.keys, queue.budget.shape[0], queue.count.shape[0]
    nd, n = n_all // dp, scfg.max_new_tokens
    r, room, refills_per_step, halvings = plan
    rl = r // dp  # slots per device at the start
    pad = jnp.int32(scfg.pad_id)
    budget = jnp.minimum(queue.budget.astype(jnp.int32), n)
    eos = jnp.asarray(scfg.eos_ids or (-1,), jnp.int32)
    tables = [jnp.asarray(t, jnp.int32) for t in decode_automata(scfg.stop_sequences, stop_table, cfg.vocab_size)]

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
        """Give up to m free slots of each device the next m rows of its queue and sample their
        first tokens. next_row int32[dp]: each device's next queue row."""
        r = sl.finish.shape[0]
        rl = r // dp
        free = (sl.finish != FINISH_NONE).reshape(dp, rl)
        slot = jax.vmap(lambda f: jnp.nonzero(f, size=m, fill_value=rl)[0])(free)  # [dp, m] ascending, rl = none
        j = next_row[:, None] + jnp.arange(m, dtype=jnp.int32)[None]  # [dp, m] rows of each device's queue
        ok = (slot < rl) & (j < queue.count[:, None])
        device = jnp.arange(dp, dtype=jnp.int32)[:, None]
        rows = jnp.where(ok, device * nd + jnp.minimum(j, nd - 1), n_all)  # global queue index, n_all = none
        safe = jnp.minimum(rows, n_all - 1)
        kv, hidden = local_refill(kv, source, jnp.where(ok, slot, rl), queue.row[safe], queue.pos[safe],
                                  queue.col[safe])
        logits0 = head(hidden)  # [dp*m, V]
        rows, ok = rows.reshape(-1), ok.reshape(-1)
        fin0 = jnp.where(ok & (budget[jnp.minimum(rows, n_all - 1)] > 0), FINISH_NONE, -1).astype(jnp.int32)
        st0 = tuple(jnp.zeros(rows.shape, jnp.int32) for _ in tables)
        tok, col, fin, states, out = advance(logits0, rows, jnp.zeros(rows.shape, jnp.int32), fin0, st0, out)
        at = jnp.where(ok, (device * rl + slot).reshape(-1), r)  # global slot; r: writes dropped
        put = lambda a, x: a.at[at].set(x, mode="drop")
        sl = _Slots(put(sl.row, rows), put(sl.col, col), put(sl.finish, fin),
                    tuple(put(a, x) for a, x in zip(sl.states, states)), put(sl.tok, tok))
        return next_row + ok.reshape(dp, m).sum(1, dtype=jnp.int32), sl, kv, out

    if scfg.unroll_layers:
        weights = model_decode.decode_weights(params, cfg)
        kv = model_decode.decode_caches(llama.init_cache(cfg, r, room))
        step_fn = lambda tok, kv: model_decode.decode_step(params, weights, cfg, tok, kv)
        head = lambda hidden: model_decode.head(weights, cfg, hidden)
    else:
        kv = llama.constrain_cache(llama.init_cache(cfg, r, room))
        head = lambda hidden: llama.lm_logits(params, cfg, hidden)

        def step_fn(tok, kv):
            logits, _, kv = llama.forward_cached(params, cfg, tok[:, None], kv)
            return logits[:, 0], llama.constrain_cache(kv)

    out = _Out(jnp.full((n_all, n), pad, jnp.int32), jnp.zeros((n_all, n), jnp.float32),
               jnp.zeros((n_all,), jnp.int32), jnp.zeros((n_all,), jnp.int32))
    empty = jnp.full((r,), -1, jnp.int32)
    sl = _Slots(jnp.full((r,), n_all, jnp.int32), jnp.zeros((r,), jnp.int32), empty,
                tuple(jnp.zeros((r,), jnp.int32) for _ in tables), jnp.full((r,), pad, jnp.int32))
    next_row, sl, kv, out = refill(rl, jnp.zeros((dp,), jnp.int32), sl, kv, out)  # fill every slot

    def waiting(next_row, sl):
        """Whether some device has a free slot and rows left in its queue."""
        free = jnp.any((sl.finish != FINISH_NONE).reshape(dp, -1), axis=1)
        return jnp.any(free & (next_row < queue.count))

    def cond(carry, last: bool):
        """Work remains (and, before the last width, the slots cannot be halved yet)."""
        _, next_row, sl, _, _ = carry
        live = (sl.finish == FINISH_NONE).reshape(dp, -1)
        queued = jnp.any(next_row < queue.count)
        work = jnp.any(live) | queued
        if last:
            return work
        return work & (queued | jnp.any(live.sum(1) > live.shape[1] // 2))

    def body(carry, refills: bool):
        i, next_row, sl, kv, out = carry
        logits, kv = step_fn(sl.tok, kv)
        tok, col, fin, states, out = advance(logits, sl.row, sl.col, sl.finish, sl.states, out)
        sl = _Slots(sl.row, col, fin, states, tok)
        if refills:
            # refill only when a slot is free and rows wait (a conditional: measured cheaper than
            # fetching refills_per_step rows every step)
            next_row, sl, kv, out = jax.lax.cond(waiting(next_row, sl), lambda a: refill(refills_per_step, *a),
                                                 lambda a: a, (next_row, sl, kv, out))
        return i + 1, next_row, sl, kv, out

    def halve(sl: _Slots, kv):
        """Each device's live rows moved into half of its slots (live first, in slot order)."""
        width = sl.finish.shape[0] // dp
        keep = jnp.argsort((sl.finish != FINISH_NONE).reshape(dp, width), axis=1, stable=True)[:, : width // 2]
        at = (jnp.arange(dp, dtype=jnp.int32)[:, None] * width + keep).reshape(-1)  # global slots kept
        return jax.tree.map(lambda a: a[at], sl), local_compact(kv, keep.astype(jnp.int32))

    widths = [w for w in (rl >> h for h in range(halvings + 1)) if w >= 1]
    carry, slot_steps = (jnp.int32(1), next_row, sl, kv, out), jnp.int32(0)
    for h, width in enumerate(widths):
        last = h == len(widths) - 1
        # after the first width the queue is empty: no refill to compile
        steps, next_row, sl, kv, out = jax.lax.while_loop(lambda c, last=last: cond(c, last),
                                                          lambda c, h=h: body(c, refills=h == 0), carry)
        slot_steps += steps * width * dp
        if not last:
            sl, kv = halve(sl, kv)
        carry = (jnp.int32(0), next_row, sl, kv, out)
    return GenerationOutput(out.tokens, out.logprobs, out.lengths, jnp.maximum(out.finish, FINISH_NONE), slot_steps)
