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
copied from the trajectory cache inside the loop (`refill.decode_rows`, continuous batching) on
the device that holds them (each device continues the states of its own trajectories; no
gather across devices), and rows wait longest-expected-first (the episode's own remainder from
the state predicts the continuation's length). "chunks" (the earlier scheme) sorts rows by budget
and decodes fixed-size chunks, each until its longest row ends.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vinejax.model import decode as model_decode
from vinejax.model import llama
from vinejax.multihost import to_host
from vinejax.sampling.continuation import (  # noqa: F401  (TrajectoryCache, trajectory_cache: re-exported)
    RowStarts,
    TrajectoryCache,
    balanced_rows,
    cache_rows_of,
    continue_rows,
    stop_array,
    trajectory_cache,
)
from vinejax.sampling.core import Rows, bucket, cache_room, decode
from vinejax.sampling.env import RolloutEnv
from vinejax.sampling.generation import row_keys
from vinejax.sharding import data_parallel_size


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


@functools.partial(jax.jit, static_argnames=("cfg", "scfg", "room"))
def _chunk_jit(params, traj: TrajectoryCache, starts: tuple, draws: Rows, stop_table, *, cfg, scfg, room):
    """Continue R cache rows: starts = (rows int32[R] trajectory cache row, pos int32[R] prefix
    length >= 1); draws: the rows' keys and budgets; stop_table: None or int32[S, V]
    (`StopTable.next_state`).

    room: cache slots of the chunk (>= max(pos + budget)); attention runs over `room` slots only.
    The indexed read of `rows` gathers them from every device (the "chunks" schedule is kept as
    the reference the refill loop is tested against).
    """
    rows, pos = starts
    k, v = traj.cache.k, traj.cache.v
    keep = min(room, k.shape[2])
    pad = ((0, 0), (0, 0), (0, room - keep), (0, 0), (0, 0))
    cache = llama.KVCache(jnp.pad(k[:, rows, :keep], pad), jnp.pad(v[:, rows, :keep], pad), pos.astype(jnp.int32))
    last = traj.hidden[rows, pos - 1]  # [R, D] hidden at the state's last prefix token
    if scfg.unroll_layers:
        weights = model_decode.decode_weights(params, cfg)
        logits0 = model_decode.head(weights, cfg, last)
    else:
        weights, logits0 = None, llama.lm_logits(params, cfg, last)
    return decode(params, cfg, scfg, llama.constrain_cache(cache), logits0, draws, stop_table, weights)


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

    tokens int[B, T] (prompt + response), lengths int[B]; ids int[B]: stable ids of the
    trajectories (default 0..B−1; e.g. their rows in the iteration), which the continuations'
    keys derive from. The cached forward pass over them (`continuation.trajectory_cache`, with
    `cache_rows` > 0: in groups of that many rows) runs on the first call and is kept, so several
    calls (adaptive K's rounds) share it; on several devices its rows are placed so that each
    device's share of that call's continuations is about equal (`continuation.balanced_rows`).
    Pass `cache` to reuse one computed elsewhere (trajectory b in cache row b).
    """

    def __init__(self, env: RolloutEnv, tokens, lengths, cache: Optional[TrajectoryCache] = None,
                 cache_rows: int = 0, ids=None):
        self.env = env
        self.tokens = np.asarray(tokens, np.int32)
        self.lengths = np.asarray(lengths, np.int32)
        self.ids = np.arange(len(self.tokens)) if ids is None else np.asarray(ids, np.int64)
        self._cache, self._cache_rows = cache, cache_rows
        self._place = None if cache is None else np.arange(len(self.tokens))  # cache row of each trajectory

    @property
    def cache(self) -> TrajectoryCache:
        """The trajectory cache (rows placed for equal work per trajectory when not yet computed)."""
        return self._cache_for(np.ones(len(self.tokens)))

    def _cache_for(self, work) -> TrajectoryCache:
        if self._cache is None:
            env, dp = self.env, data_parallel_size()
            total, _ = cache_rows_of(len(self.tokens), self._cache_rows, dp)
            self._place = balanced_rows(work, total, dp)
            self._cache = trajectory_cache(env.params, env.model_cfg, self.tokens, self.lengths, pad_id=env.scfg.pad_id,
                                           max_rows=self._cache_rows, rows=self._place)
        return self._cache

    def continue_from(self, state_positions, rng: jax.Array, num_samples, *, state_mask=None,
                      budgets=None) -> ContinuationOutput:
        """num_samples continuations from every state of every trajectory.

        state_positions int[B, S]: prefix length of each state (state = tokens[b, :pos], 1 <= pos
        <= lengths[b]); num_samples: K for every state, or int[B, S] per state (output K = the
        largest; slots k >= a state's own count are empty: length 0, FINISH_NONE); state_mask
        bool[B, S] (default all true); budgets: optional int[B, S] max new tokens per state
        (capped at scfg.max_new_tokens; default `env.budgets` of the positions). Continuation k
        of the state with unique-prefix id u uses the key fold_in(fold_in(fold_in(rng,
        ids[u_row]), u_state), k) where (u_row, u_state) is the first state with that exact
        prefix (`unique_prefixes`), so results are reproducible and independent of scheduling,
        chunking, devices and of which other trajectories share the call. Identical prefixes
        share their continuations (a prefix shared by states with different counts gets the
        largest). `env.chunk_rows` rows are decoded at once (slots with refill, chunk rows
        otherwise); `env.schedule` "refill" or "chunks" (module docstring);
        `env.refills_per_step`: slots refilled per device per loop iteration at most (default
        its slots // 8). env.stops: a `stops.stop_automaton` table. Stop sequences and stop
        strings match within the continuation only (as vLLM's `stop` with the prefix in the
        prompt); cut a continuation with `stops.cut_at_stop(tokenizer, stops, prefix +
        continuation, search_from=len(prefix))`.
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
        work = np.zeros(b)
        np.add.at(work, rep[:, 0], u_count * (u_expect + 1))  # tokens each trajectory's states are expected to decode
        cache = self._cache_for(work)  # placed by this call's work when it is the first
        place = self._place
        order = np.argsort(-u_budget, kind="stable") if env.schedule == "chunks" else np.lexsort((-u_budget, -u_expect))
        row_u = np.repeat(order, u_count[order])
        row_k = np.concatenate([np.arange(u_count[u]) for u in order])
        row_b, row_s = rep[row_u, 0], rep[row_u, 1]
        base = jax.vmap(jax.random.fold_in)(row_keys(rng, self.ids[row_b]), jnp.asarray(row_s, jnp.uint32))
        keys = jax.vmap(jax.random.fold_in)(base, jnp.asarray(row_k, jnp.uint32))
        row_pos = pos[row_b, row_s].astype(np.int32)
        starts = RowStarts(place[row_b], row_pos, row_pos - 1, u_budget[row_u], keys)
        if env.schedule == "refill":
            res = continue_rows(env, cache, starts, env.chunk_rows)
            decoded, slots, slot_steps, chunks = (res.tokens, res.logprobs, res.lengths, res.finish), res.slots, \
                res.slot_steps, 1
        else:
            decoded, slots, slot_steps, chunks = _chunk_rows(env, cache, starts)

        out_tok = np.full((nu, kmax, n), scfg.pad_id, np.int32)
        out_lp = np.zeros((nu, kmax, n), np.float32)
        out_len = np.zeros((nu, kmax), np.int32)
        out_fin = np.zeros((nu, kmax), np.int32)
        out_tok[row_u, row_k], out_lp[row_u, row_k], out_len[row_u, row_k], out_fin[row_u, row_k] = decoded

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
    int[B]): `Trajectories(env, tokens, lengths).continue_from(...)`, whose docstring says it all
    (`Trajectories` also takes the trajectories' stable ids)."""
    return Trajectories(env, tokens, lengths).continue_from(state_positions, rng, num_samples,
                                                            state_mask=state_mask, budgets=budgets)


def _chunk_rows(env: RolloutEnv, traj: TrajectoryCache, starts: RowStarts):
    """Fixed-size chunks, each decoded until its longest row ends. Returns ((tokens, logprobs,
    lengths, finish) of every row, slots, slot_steps, chunks)."""
    total, dp, table = len(starts.row), data_parallel_size(), stop_array(env)
    chunk = bucket(env.chunk_rows, multiple_of=dp)
    dispatched = []
    for start in range(0, total, chunk):
        sl = slice(start, min(start + chunk, total))
        m = sl.stop - sl.start
        r = chunk if m == chunk else bucket(m, multiple_of=dp)
        pad_to = lambda x, fill=0: np.concatenate([x[sl], np.full((r - m,), fill, x.dtype)]).astype(np.int32)
        keys = starts.keys[sl]
        if r > m:
            keys = jnp.concatenate([keys, jnp.broadcast_to(keys[:1], (r - m,))])
        room = cache_room(int((starts.pos[sl] + starts.budget[sl]).max()))  # slots this chunk needs
        res = _chunk_jit(env.params, traj, (pad_to(starts.row), pad_to(starts.pos, 1)), Rows(keys, pad_to(starts.budget)),
                         table, cfg=env.model_cfg, scfg=env.scfg, room=room)
        dispatched.append((m, r, res))  # dispatch every chunk before reading any back
    parts, slot_steps = [], 0
    for m, r, res in dispatched:
        res = to_host(res)  # the whole chunk on every process
        parts.append((res.tokens[:m], res.logprobs[:m], res.lengths[:m], res.finish_reason[:m]))
        slot_steps += r * int(res.steps)
    decoded = tuple(np.concatenate(x) for x in zip(*parts))
    return decoded, chunk, slot_steps, len(dispatched)


# The jitted core of the "chunks" schedule under a public name (as `_chunk_jit`).
chunk_program = _chunk_jit
