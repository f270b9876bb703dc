"""VinePPO Monte-Carlo continuations from the trajectory's own KV cache.

`Trajectories.continue_from` (and `continue_from_prefixes`) samples K continuations from every
state (prefix) of every trajectory.
One cached forward pass over the right-padded trajectories (which training needs anyway) holds
the keys/values of every prefix: a state at position `pos` of row b continues from rows of that
cache gathered K times with `lengths = pos`, and its first token is drawn from the logits at
pos - 1 of the same pass. No prefix is prefilled again, and identical prefixes (e.g. the prompt,
state 0 of every sample of one problem) are expanded once and share their K continuations.
Scheduling (`schedule`): "refill" (default) decodes every continuation row in one jitted loop with
a fixed number of slots; a slot whose row finishes takes the next waiting row, its cache rows
gathered from the trajectory cache inside the loop (`refill.decode_rows`, continuous batching),
and rows wait longest-expected-first (the episode's own remainder from the state predicts the
continuation's length). "chunks" (the earlier scheme) sorts rows by budget and decodes fixed-size
chunks, each until its longest row ends.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from vinejax.model import llama
from vinejax.model.config import ModelConfig
from vinejax.multihost import to_host
from vinejax.sampling.core import Rows, bucket, cache_room, decode
from vinejax.sampling.env import RolloutEnv
from vinejax.sampling.generation import row_keys
from vinejax.sampling.refill import RefillPlan, RowStart, decode_rows
from vinejax.sharding import data_parallel_size


class TrajectoryCache(NamedTuple):
    """Cache of a forward pass over right-padded trajectories [Bb, Tb] (bucketed shapes).

    cache: KVCache with k/v [L, Bb, Tb, Hkv, Dh] (lengths = trajectory lengths);
    hidden: final-normed hidden states [Bb, Tb, D] (next-token logits at any position via the head).
    """

    cache: llama.KVCache
    hidden: jax.Array


class ContinuationOutput(NamedTuple):
    """K continuations of each state: tokens/logprobs [B, S, K, N], lengths/finish_reason [B, S, K].

    Masked-out states have length 0 and finish_reason FINISH_NONE. `stats` (host floats):
    unique_states, rows, chunks (decode calls), slots (rows decoded at once), slot_steps (slots ×
    loop steps, padding included; with refill each refilled row's first token, drawn from the
    trajectory pass, counts one more), live_steps (= sum of lengths = useful tokens),
    live_fraction = live_steps / slot_steps.
    """

    tokens: np.ndarray
    logprobs: np.ndarray
    lengths: np.ndarray
    finish_reason: np.ndarray
    stats: dict


@functools.partial(jax.jit, static_argnames=("cfg",))
def _trajectory_jit(params, tokens, lengths, *, cfg):
    tokens = nn.with_logical_constraint(tokens, ("batch", "length"))
    cache = llama.constrain_cache(llama.init_cache(cfg, tokens.shape[0], tokens.shape[1]))
    _, hidden, cache = llama.forward_cached(params, cfg, tokens, cache, new_lengths=lengths)
    return TrajectoryCache(cache, hidden)


def trajectory_cache(params: dict, cfg: ModelConfig, tokens, lengths, pad_id: int = 0,
                     max_rows: int = 0) -> TrajectoryCache:
    """A cached forward pass over right-padded trajectories tokens int[B, T], lengths int[B].

    Shapes are bucketed (rows to `bucket(B)`, length to `bucket(T)`); extra rows are padding.
    max_rows > 0: the pass runs over groups of at most `bucket(max_rows)` trajectories (one
    compiled program), which bounds its activations (the [rows, heads, T, T] attention scores
    above all: a whole 512-episode iteration at once does not fit an 80 GiB GPU); the groups'
    caches are joined along the rows.
    """
    tokens = np.asarray(tokens, np.int32)
    b, t = tokens.shape
    dp = data_parallel_size()
    bb, tb = bucket(b, multiple_of=dp), bucket(t, minimum=16)
    group = bb if max_rows <= 0 else min(bb, bucket(max_rows, multiple_of=dp))
    bb = -(-bb // group) * group
    tok = np.full((bb, tb), pad_id, np.int32)
    tok[:b, :t] = tokens
    lens = np.ones((bb,), np.int32)
    lens[:b] = np.asarray(lengths)
    parts = [_trajectory_jit(params, tok[i : i + group], lens[i : i + group], cfg=cfg) for i in range(0, bb, group)]
    return parts[0] if len(parts) == 1 else _join_rows(parts)


@jax.jit
def _join_rows(parts: list) -> TrajectoryCache:
    """The trajectory caches of consecutive row groups as one (rows: axis 1 of k/v, 0 elsewhere)."""
    k = jnp.concatenate([p.cache.k for p in parts], axis=1)
    v = jnp.concatenate([p.cache.v for p in parts], axis=1)
    lengths = jnp.concatenate([p.cache.lengths for p in parts])
    cache = llama.constrain_cache(llama.KVCache(k, v, lengths))
    return TrajectoryCache(cache, jnp.concatenate([p.hidden for p in parts]))


@functools.partial(jax.jit, static_argnames=("cfg", "scfg", "room"))
def _chunk_jit(params, traj: TrajectoryCache, rows, pos, budget, keys, stop_table, *, cfg, scfg, room):
    """Continue R cache rows: rows int32[R] trajectory row, pos int32[R] prefix length (>= 1);
    stop_table: None or int32[S, V] (`StopTable.next_state`).

    room: cache slots of the chunk (>= max(pos + budget)); attention runs over `room` slots only.
    """
    k, v = traj.cache.k, traj.cache.v
    keep = min(room, k.shape[2])
    pad = ((0, 0), (0, 0), (0, room - keep), (0, 0), (0, 0))
    cache = llama.KVCache(jnp.pad(k[:, rows, :keep], pad), jnp.pad(v[:, rows, :keep], pad), pos.astype(jnp.int32))
    last = traj.hidden[rows, pos - 1]  # [R, D] hidden at the state's last prefix token
    logits0 = llama.lm_logits(params, cfg, last)
    return decode(params, cfg, scfg, llama.constrain_cache(cache), logits0, Rows(keys, budget), stop_table)


class _Queue(NamedTuple):
    """Continuation rows: row int32[N] trajectory row, pos int32[N] prefix length (>= 1),
    budget int32[N] max new tokens, keys typed PRNG keys [N]."""

    row: jax.Array
    pos: jax.Array
    budget: jax.Array
    keys: jax.Array


@functools.partial(jax.jit, static_argnames=("cfg", "scfg", "plan"))
def _refill_jit(params, traj: TrajectoryCache, queue: _Queue, num_rows, stop_table, *, cfg, scfg, plan: RefillPlan):
    """Decode the queue's rows with `plan.slots` slots refilled from the trajectory cache
    (`refill.decode_rows`)."""
    k_all, v_all = traj.cache.k, traj.cache.v
    keep = min(plan.room, k_all.shape[2])
    pad = ((0, 0), (0, 0), (0, plan.room - keep), (0, 0), (0, 0))

    def fetch(rows):
        b, p = queue.row[rows], queue.pos[rows]
        logits0 = llama.lm_logits(params, cfg, traj.hidden[b, p - 1])  # [M, V] from the state's last token
        return RowStart(jnp.pad(k_all[:, b, :keep], pad), jnp.pad(v_all[:, b, :keep], pad), p, logits0)

    return decode_rows(params, cfg, scfg, fetch, Rows(queue.keys, queue.budget), num_rows, plan, stop_table)


def unique_prefixes(tokens, state_positions, state_mask=None) -> tuple[np.ndarray, np.ndarray]:
    """Distinct states by exact token prefix: uid int64[B, S] (-1 where masked out) and the
    representative (row, state) of each uid, int64[U, 2], in first-seen (row-major) order."""
    tokens = np.asarray(tokens)
    pos = np.asarray(state_positions)
    b, s = pos.shape
    mask = np.ones((b, s), bool) if state_mask is None else np.asarray(state_mask, bool)
    uid = np.full((b, s), -1, np.int64)
    seen: dict = {}
    reps = []
    for i in range(b):
        for j in range(s):
            if not mask[i, j]:
                continue
            key = tokens[i, : pos[i, j]].tobytes()
            u = seen.get(key)
            if u is None:
                u = seen[key] = len(reps)
                reps.append((i, j))
            uid[i, j] = u
    return uid, np.asarray(reps, np.int64).reshape(len(reps), 2)


class Trajectories:
    """A batch of right-padded trajectories whose states `continue_from` samples continuations of.

    tokens int[B, T] (prompt + response), lengths int[B]; the cached forward pass over them
    (`trajectory_cache`, with `cache_rows` > 0: in groups of that many rows) runs on the first
    call and is kept, so several calls (adaptive K's rounds) share it; pass `cache` to reuse one
    computed elsewhere.
    """

    def __init__(self, env: RolloutEnv, tokens, lengths, cache: Optional[TrajectoryCache] = None,
                 cache_rows: int = 0):
        self.env = env
        self.tokens = np.asarray(tokens, np.int32)
        self.lengths = np.asarray(lengths, np.int32)
        self._cache, self._cache_rows = cache, cache_rows

    @property
    def cache(self) -> TrajectoryCache:
        if self._cache is None:
            env = self.env
            self._cache = trajectory_cache(env.params, env.model_cfg, self.tokens, self.lengths, pad_id=env.scfg.pad_id,
                                           max_rows=self._cache_rows)
        return self._cache

    def continue_from(self, state_positions, rng: jax.Array, num_samples, *, state_mask=None,
                      budgets=None) -> ContinuationOutput:
        """num_samples continuations from every state of every trajectory.

        state_positions int[B, S]: prefix length of each state (state = tokens[b, :pos], 1 <= pos
        <= lengths[b]); num_samples: K for every state, or int[B, S] per state (output K = the
        largest; slots k >= a state's own count are empty: length 0, FINISH_NONE); state_mask
        bool[B, S] (default all true); budgets: optional int[B, S] max new tokens per state
        (capped at scfg.max_new_tokens; default `env.budgets` of the positions). Continuation k
        of the state with unique-prefix id u uses the key fold_in(fold_in(rng, u_row * S +
        u_state), k) where (u_row, u_state) is the first state with that exact prefix
        (`unique_prefixes`), so results are reproducible and independent of scheduling and
        chunking. Identical prefixes share their continuations (a prefix shared by states with
        different counts gets the largest). `env.chunk_rows` rows are decoded at once (slots with
        refill, chunk rows otherwise); `env.schedule` "refill" or "chunks" (module docstring);
        `env.refills_per_step`: slots refilled per loop iteration at most (default slots // 8).
        env.stops: a `stops.stop_automaton` table. Stop sequences and stop strings match within
        the continuation only (as vLLM's `stop` with the prefix in the prompt); cut a
        continuation with `stops.cut_at_stop(tokenizer, stops, prefix + continuation,
        search_from=len(prefix))`.
        """
        env, scfg = self.env, self.env.scfg
        tokens, lengths = self.tokens, self.lengths
        pos = np.asarray(state_positions, np.int32)
        b, s = pos.shape
        mask = np.ones((b, s), bool) if state_mask is None else np.asarray(state_mask, bool)
        counts = np.broadcast_to(np.asarray(num_samples, np.int64), (b, s))
        if np.any(counts < 0):
            raise ValueError("num_samples must be >= 0")
        mask = mask & (counts > 0)
        kmax = int(counts.max(initial=0))
        n = scfg.max_new_tokens
        bud = np.minimum(env.budgets(pos) if budgets is None else np.asarray(budgets, np.int32), n)
        if np.any(mask & ((pos < 1) | (pos > lengths[:, None]))):
            raise ValueError("state positions must be in [1, length] of their trajectory")

        uid, rep = unique_prefixes(tokens, pos, mask)
        nu = len(rep)
        if nu == 0:  # every state masked out
            z = np.zeros((b, s, kmax), np.int32)
            stats = dict(unique_states=0, rows=0, chunks=0, slots=0, slot_steps=0, live_steps=0, live_fraction=0.0)
            return ContinuationOutput(
                np.full((b, s, kmax, n), scfg.pad_id, np.int32), np.zeros((b, s, kmax, n), np.float32), z, z, stats
            )
        u_budget = np.zeros((nu,), np.int32)
        np.maximum.at(u_budget, uid[mask], bud[mask])
        u_count = np.zeros((nu,), np.int64)
        np.maximum.at(u_count, uid[mask], counts[mask])
        # Expected length: the episode's own continuation from the state (the longest over episodes
        # sharing it), capped by the budget; rows wait longest first (refill), or by budget (chunks).
        u_expect = np.zeros((nu,), np.int64)
        np.maximum.at(u_expect, uid[mask], np.broadcast_to(lengths[:, None], (b, s))[mask] - pos[mask])
        u_expect = np.minimum(u_expect, u_budget)
        order = np.argsort(-u_budget, kind="stable") if env.schedule == "chunks" else np.lexsort((-u_budget, -u_expect))
        row_u = np.repeat(order, u_count[order])
        row_k = np.concatenate([np.arange(u_count[u]) for u in order])
        row_b, row_s = rep[row_u, 0], rep[row_u, 1]
        base = row_keys(rng, (row_b * s + row_s).astype(np.uint32))
        all_keys = jax.vmap(jax.random.fold_in)(base, jnp.asarray(row_k, jnp.uint32))
        queue = _Queue(row_b.astype(np.int32), pos[row_b, row_s].astype(np.int32), u_budget[row_u], all_keys)

        run = _refill_rows if env.schedule == "refill" else _chunk_rows
        results, slots, slot_steps, chunks = run(env, self.cache, queue)

        out_tok = np.full((nu, kmax, n), scfg.pad_id, np.int32)
        out_lp = np.zeros((nu, kmax, n), np.float32)
        out_len = np.zeros((nu, kmax), np.int32)
        out_fin = np.zeros((nu, kmax), np.int32)
        for sl, res in results:
            u, k = row_u[sl], row_k[sl]
            out_tok[u, k], out_lp[u, k], out_len[u, k], out_fin[u, k] = res

        keep = mask[..., None] & (np.arange(kmax)[None, None] < counts[..., None])  # [B, S, K]
        safe = np.where(mask, uid, 0)
        sel = lambda x: np.where(keep.reshape(keep.shape + (1,) * (x.ndim - 2)), x[safe], 0)
        tok = np.where(keep[..., None], out_tok[safe], scfg.pad_id)
        live = int(out_len.sum())
        stats = dict(unique_states=nu, rows=len(row_u), chunks=chunks, slots=slots, slot_steps=slot_steps,
                     live_steps=live, live_fraction=live / max(slot_steps, 1))
        return ContinuationOutput(tok, sel(out_lp), sel(out_len), sel(out_fin), stats)


def continue_from_prefixes(env: RolloutEnv, tokens, lengths, state_positions, rng: jax.Array, num_samples, *,
                           state_mask=None, budgets=None) -> ContinuationOutput:
    """num_samples continuations from every state of every trajectory tokens int[B, T] (lengths
    int[B]): `Trajectories(env, tokens, lengths).continue_from(...)`, whose docstring says it all."""
    return Trajectories(env, tokens, lengths).continue_from(state_positions, rng, num_samples, state_mask=state_mask,
                                                           budgets=budgets)


def _stop_array(env: RolloutEnv):
    return None if env.stops is None else jnp.asarray(env.stops.next_state)


def _chunk_rows(env: RolloutEnv, traj: TrajectoryCache, queue: _Queue):
    """Fixed-size chunks, each decoded until its longest row ends. Returns ([(slice, (tokens,
    logprobs, lengths, finish))], slots, slot_steps, chunks)."""
    total, dp, table = len(queue.row), data_parallel_size(), _stop_array(env)
    chunk = bucket(env.chunk_rows, multiple_of=dp)
    dispatched = []
    for start in range(0, total, chunk):
        sl = slice(start, min(start + chunk, total))
        m = sl.stop - sl.start
        r = chunk if m == chunk else bucket(m, multiple_of=dp)
        pad_to = lambda x, fill=0: np.concatenate([x[sl], np.full((r - m,), fill, x.dtype)])
        keys = queue.keys[sl]
        if r > m:
            keys = jnp.concatenate([keys, jnp.broadcast_to(keys[:1], (r - m,))])
        room = cache_room(int((queue.pos[sl] + queue.budget[sl]).max()))  # slots this chunk needs
        res = _chunk_jit(env.params, traj, pad_to(queue.row), pad_to(queue.pos, 1), pad_to(queue.budget), keys, table,
                         cfg=env.model_cfg, scfg=env.scfg, room=room)
        dispatched.append((sl, m, r, res))  # dispatch every chunk before reading any back
    results, slot_steps = [], 0
    for sl, m, r, res in dispatched:
        res = to_host(res)  # the whole chunk on every process
        results.append((sl, (res.tokens[:m], res.logprobs[:m], res.lengths[:m], res.finish_reason[:m])))
        slot_steps += r * int(res.steps)
    return results, chunk, slot_steps, len(dispatched)


def _refill_rows(env: RolloutEnv, traj: TrajectoryCache, queue: _Queue):
    """One decode call with `env.chunk_rows` slots (fewer when there are fewer rows), refilled in the loop."""
    total, dp = len(queue.row), data_parallel_size()
    slots = min(bucket(env.chunk_rows, multiple_of=dp), bucket(total, multiple_of=dp))
    nb = bucket(total, multiple_of=dp)  # queue length bucketed; rows >= total never start
    pad_to = lambda x, fill=0: np.concatenate([x, np.full((nb - total,), fill, x.dtype)])
    keys = queue.keys
    if nb > total:
        keys = jnp.concatenate([keys, jnp.broadcast_to(keys[:1], (nb - total,))])
    room = cache_room(int((queue.pos + queue.budget).max()))
    refills = env.refills_per_step
    refills = max(1, slots // 8) if refills is None else max(1, min(int(refills), slots))
    padded = _Queue(pad_to(queue.row), pad_to(queue.pos, 1), pad_to(queue.budget), keys)
    res = _refill_jit(env.params, traj, padded, np.int32(total), _stop_array(env), cfg=env.model_cfg, scfg=env.scfg,
                      plan=RefillPlan(slots, room, refills))
    res = to_host(res)  # every row on every process
    sl = slice(0, total)
    slot_steps = slots * int(res.steps) + max(total - slots, 0)  # + first tokens of refilled rows
    return [(sl, (res.tokens[:total], res.logprobs[:total], res.lengths[:total], res.finish_reason[:total]))], \
        slots, slot_steps, 1


# The jitted cores of MC continuations under public names, for ahead-of-time lowering with
# abstract arguments (`vinejax.tools.plan`): same arguments as `_trajectory_jit` / `_chunk_jit`.
trajectory_program = _trajectory_jit
chunk_program = _chunk_jit
