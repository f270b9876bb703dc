"""VinePPO Monte-Carlo continuations from the trajectory's own KV cache.

`continue_from_prefixes` samples K continuations from every state (prefix) of every trajectory.
One cached forward pass over the right-padded trajectories (which training needs anyway) holds
the keys/values of every prefix: a state at position `pos` of row b continues from rows of that
cache gathered K times with `lengths = pos`, and its first token is drawn from the logits at
pos - 1 of the same pass. No prefix is prefilled again, and identical prefixes (e.g. the prompt,
state 0 of every sample of one problem) are expanded once and share their K continuations.
Continuation rows are sorted by their token budget and processed in fixed-size chunks, so rows in
one chunk finish at similar steps and the decode loop spends few steps on finished rows.
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
from vinejax.sampling.core import SamplingConfig, bucket, cache_room, decode
from vinejax.sampling.generation import row_keys
from vinejax.sampling.stops import StopTable
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
    unique_states, rows, chunks, slot_steps (rows × loop steps, padding included), live_steps
    (= sum of lengths = useful tokens), live_fraction = live_steps / slot_steps.
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


def trajectory_cache(params: dict, cfg: ModelConfig, tokens, lengths, pad_id: int = 0) -> TrajectoryCache:
    """One cached forward pass over right-padded trajectories tokens int[B, T], lengths int[B].

    Shapes are bucketed (rows to `bucket(B)`, length to `bucket(T)`); extra rows are padding.
    """
    tokens = np.asarray(tokens, np.int32)
    b, t = tokens.shape
    bb, tb = bucket(b, multiple_of=data_parallel_size()), bucket(t, minimum=16)
    tok = np.full((bb, tb), pad_id, np.int32)
    tok[:b, :t] = tokens
    lens = np.ones((bb,), np.int32)
    lens[:b] = np.asarray(lengths)
    return _trajectory_jit(params, tok, lens, cfg=cfg)


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
    return decode(params, cfg, scfg, llama.constrain_cache(cache), logits0, keys, budget, stop_table)


def continue_from_prefixes(
    params: dict,
    cfg: ModelConfig,
    tokens,
    lengths,
    state_positions,
    rng: jax.Array,
    scfg: SamplingConfig,
    num_samples: int,
    *,
    state_mask=None,
    budgets=None,
    max_rows_per_chunk: int = 256,
    traj: Optional[TrajectoryCache] = None,
    stops: Optional[StopTable] = None,
) -> ContinuationOutput:
    """K = num_samples continuations from every state of every trajectory.

    tokens int[B, T] right-padded trajectories (prompt + response), lengths int[B];
    state_positions int[B, S]: prefix length of each state (state = tokens[b, :pos], 1 <= pos <=
    lengths[b]); state_mask bool[B, S] (default all true); budgets: optional int[B, S] max new
    tokens per state (capped at scfg.max_new_tokens); traj: a precomputed `trajectory_cache` of
    the same rows (computed here otherwise). Continuation k of the state with unique-prefix id u
    uses the key fold_in(fold_in(rng, u_row * S + u_state), k) where (u_row, u_state) is the first
    state with that exact prefix, so results are reproducible and independent of chunking.
    stops: a `stops.stop_automaton` table. Stop sequences and stop strings match within the
    continuation only (as vLLM's `stop` with the prefix in the prompt); cut a continuation with
    `stops.cut_at_stop(tokenizer, stops, prefix + continuation, search_from=len(prefix))`.
    """
    tokens = np.asarray(tokens, np.int32)
    lengths = np.asarray(lengths, np.int32)
    pos = np.asarray(state_positions, np.int32)
    b, s = pos.shape
    mask = np.ones((b, s), bool) if state_mask is None else np.asarray(state_mask, bool)
    n = scfg.max_new_tokens
    bud = np.full((b, s), n, np.int32) if budgets is None else np.minimum(np.asarray(budgets, np.int32), n)
    if np.any(mask & ((pos < 1) | (pos > lengths[:, None]))):
        raise ValueError("state positions must be in [1, length] of their trajectory")

    # Dedup by exact token prefix: uid per (b, s); representatives in first-seen order.
    uid = np.full((b, s), -1, np.int64)
    seen: dict = {}
    reps = []  # (row, state)
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
    nu = len(reps)
    if nu == 0:  # every state masked out
        z = np.zeros((b, s, num_samples), np.int32)
        stats = dict(unique_states=0, rows=0, chunks=0, slot_steps=0, live_steps=0, live_fraction=0.0)
        return ContinuationOutput(
            np.full((b, s, num_samples, n), scfg.pad_id, np.int32), np.zeros((b, s, num_samples, n), np.float32), z, z, stats
        )
    rep = np.asarray(reps, np.int64).reshape(nu, 2)
    u_budget = np.zeros((nu,), np.int32)
    np.maximum.at(u_budget, uid[mask], bud[mask])

    # Rows (unique state, sample) sorted by budget, longest first.
    order = np.argsort(-u_budget, kind="stable")
    row_u = np.repeat(order, num_samples)
    row_k = np.tile(np.arange(num_samples), nu)
    row_b, row_s = rep[row_u, 0], rep[row_u, 1]
    base = row_keys(rng, (row_b * s + row_s).astype(np.uint32))
    all_keys = jax.vmap(jax.random.fold_in)(base, jnp.asarray(row_k, jnp.uint32))

    if traj is None:
        traj = trajectory_cache(params, cfg, tokens, lengths, pad_id=scfg.pad_id)
    dp = data_parallel_size()
    table = None if stops is None else jnp.asarray(stops.next_state)
    chunk = bucket(max_rows_per_chunk, multiple_of=dp)
    total = len(row_u)
    out_tok = np.full((nu, num_samples, n), scfg.pad_id, np.int32)
    out_lp = np.zeros((nu, num_samples, n), np.float32)
    out_len = np.zeros((nu, num_samples), np.int32)
    out_fin = np.zeros((nu, num_samples), np.int32)
    slot_steps, chunks = 0, 0
    results = []
    for start in range(0, total, chunk):
        sl = slice(start, min(start + chunk, total))
        m = sl.stop - sl.start
        r = chunk if m == chunk else bucket(m, multiple_of=dp)
        pad_to = lambda x, fill=0: np.concatenate([x, np.full((r - m,), fill, x.dtype)])
        keys = all_keys[sl]
        if r > m:
            keys = jnp.concatenate([keys, jnp.broadcast_to(keys[:1], (r - m,))])
        c_pos = pos[row_b[sl], row_s[sl]].astype(np.int32)
        c_budget = u_budget[row_u[sl]]
        room = cache_room(int((c_pos + c_budget).max()))  # slots this chunk needs
        res = _chunk_jit(
            params,
            traj,
            pad_to(row_b[sl].astype(np.int32)),
            pad_to(c_pos, 1),
            pad_to(c_budget),
            keys,
            table,
            cfg=cfg,
            scfg=scfg,
            room=room,
        )
        results.append((sl, m, r, res))  # dispatch every chunk before reading any back
    for sl, m, r, res in results:
        res = to_host(res)  # the whole chunk on every process
        u, k = row_u[sl], row_k[sl]
        out_tok[u, k] = res.tokens[:m]
        out_lp[u, k] = res.logprobs[:m]
        out_len[u, k] = res.lengths[:m]
        out_fin[u, k] = res.finish_reason[:m]
        slot_steps += r * int(res.steps)
        chunks += 1

    safe = np.where(mask, uid, 0)
    sel = lambda x: np.where(mask.reshape(mask.shape + (1,) * (x.ndim - 1)), x[safe], 0)
    tok = np.where(mask[..., None, None], out_tok[safe], scfg.pad_id)
    live = int(out_len.sum())
    stats = dict(
        unique_states=nu,
        rows=total,
        chunks=chunks,
        slot_steps=slot_steps,
        live_steps=live,
        live_fraction=live / max(slot_steps, 1),
    )
    return ContinuationOutput(tok, sel(out_lp), sel(out_len), sel(out_fin), stats)


# The jitted cores of MC continuations under public names, for ahead-of-time lowering with
# abstract arguments (`vinejax.tools.plan`): same arguments as `_trajectory_jit` / `_chunk_jit`.
trajectory_program = _trajectory_jit
chunk_program = _chunk_jit
