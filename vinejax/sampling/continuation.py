"""Rows continued from a cache: the cached forward pass over right-padded rows (`trajectory_cache`),
where each row goes on the devices (`balanced_rows`), and the refill decode of a list of rows
that continue prefixes of it (`continue_rows`), each device continuing the rows it holds.

`generate` (its prompts' cache, when more rows than `RolloutEnv.decode_rows` are sampled) and MC
(`mc.Trajectories`, the trajectory pass) both decode through `continue_rows`.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from vinejax.model import llama
from vinejax.model.config import ModelConfig
from vinejax.multihost import to_host
from vinejax.sampling.core import bucket, cache_room
from vinejax.sampling.env import RolloutEnv
from vinejax.sampling.refill import HIDDEN_AXES, TAIL_HALVINGS, Queue, RefillPlan, Source, decode_rows
from vinejax.sharding import data_parallel_size


class TrajectoryCache(NamedTuple):
    """Cache of a forward pass over right-padded trajectories [Bb, Tb] (bucketed shapes).

    cache: KVCache with k/v [L, Bb, Tb, Hkv, Dh] (lengths = trajectory lengths);
    hidden: final-normed hidden states [Bb, Tb, D] (next-token logits at any position via the head).
    Rows over the data axes (device d holds rows d·Bb/dp …).
    """

    cache: llama.KVCache
    hidden: jax.Array


def trajectory_pass(params, tokens, lengths, cfg: ModelConfig) -> TrajectoryCache:
    """The cached forward pass over tokens int32[B, T] (call inside jit)."""
    tokens = nn.with_logical_constraint(tokens, ("batch", "length"))
    cache = llama.constrain_cache(llama.init_cache(cfg, tokens.shape[0], tokens.shape[1]))
    _, hidden, cache = llama.forward_cached(params, cfg, tokens, cache, new_lengths=lengths)
    return TrajectoryCache(cache, nn.with_logical_constraint(hidden, HIDDEN_AXES))


_trajectory_jit = jax.jit(trajectory_pass, static_argnames=("cfg",))


def trajectory_cache(params: dict, cfg: ModelConfig, tokens, lengths, pad_id: int = 0, max_rows: int = 0,
                     rows=None) -> TrajectoryCache:
    """A cached forward pass over right-padded trajectories tokens int[B, T], lengths int[B].

    Shapes are bucketed (rows to `bucket(B)`, a multiple of the data-parallel size; length to
    `bucket(T)`); extra rows are padding. rows: int[B] the cache row of each trajectory (default
    0..B−1; `balanced_rows` spreads the work over the devices). max_rows > 0: the pass runs over
    groups of at most `bucket(max_rows)` rows (one compiled program), which bounds its
    activations (the [rows, heads, T, T] attention scores above all); the groups' caches are
    joined along the rows.
    """
    tokens = np.asarray(tokens, np.int32)
    b, t = tokens.shape
    (bb, group), tb = cache_rows_of(b, max_rows, data_parallel_size()), bucket(t, minimum=16)
    rows = np.arange(b) if rows is None else np.asarray(rows)
    tok = np.full((bb, tb), pad_id, np.int32)
    tok[rows, :t] = tokens
    lens = np.ones((bb,), np.int32)
    lens[rows] = np.asarray(lengths)
    parts = [_trajectory_jit(params, tok[i : i + group], lens[i : i + group], cfg=cfg) for i in range(0, bb, group)]
    return parts[0] if len(parts) == 1 else _join_rows(parts)


@jax.jit
def _join_rows(parts: list) -> TrajectoryCache:
    """The trajectory caches of consecutive row groups as one (rows: axis 1 of k/v, 0 elsewhere)."""
    k = jnp.concatenate([p.cache.k for p in parts], axis=1)
    v = jnp.concatenate([p.cache.v for p in parts], axis=1)
    lengths = jnp.concatenate([p.cache.lengths for p in parts])
    cache = llama.constrain_cache(llama.KVCache(k, v, lengths))
    return TrajectoryCache(cache, nn.with_logical_constraint(jnp.concatenate([p.hidden for p in parts]), HIDDEN_AXES))


def cache_rows_of(n: int, max_rows: int, dp: int) -> tuple[int, int]:
    """(rows of the cache, rows per pass) of `trajectory_cache` over n trajectories in passes of
    at most `max_rows` (0: one pass), dp the data-parallel size."""
    bb = bucket(n, multiple_of=dp)
    group = bb if max_rows <= 0 else min(bb, bucket(max_rows, multiple_of=dp))
    return -(-bb // group) * group, group


def balanced_rows(work, total: int, dp: int) -> np.ndarray:
    """int[N] the cache row (of `total`, a multiple of dp) of each of N items with expected decode
    work `work` f[N]: heaviest first onto the device with the least work and a free row (device d
    holds rows d·total/dp …). One device: rows 0..N−1."""
    work = np.asarray(work, np.float64)
    if dp == 1:
        return np.arange(len(work))
    per = total // dp
    load, used = np.zeros(dp), np.zeros(dp, np.int64)
    out = np.empty(len(work), np.int64)
    for i in np.argsort(-work, kind="stable"):
        open_ = np.nonzero(used < per)[0]
        d = open_[np.argmin(load[open_])]
        out[i], used[d], load[d] = d * per + used[d], used[d] + 1, load[d] + work[i]
    return out


class RowStarts(NamedTuple):
    """Rows to decode, in the order they should start: row int[N] the cache row each continues,
    pos int[N] its cached prefix length (>= 1), col int[N] the hidden column of its first token
    (pos − 1 in a trajectory cache), budget int[N] max new tokens, keys typed PRNG keys [N]."""

    row: np.ndarray
    pos: np.ndarray
    col: np.ndarray
    budget: np.ndarray
    keys: jax.Array


class Decoded(NamedTuple):
    """Outputs of `continue_rows` in the input rows' order: tokens, logprobs [N, max_new_tokens],
    lengths, finish [N] (numpy, every process); slots (rows decoded at once at the start); steps
    (loop iterations at full width: slot_steps // slots); slot_steps (the slots of every loop
    iteration, summed, + each refilled row's first token)."""

    tokens: np.ndarray
    logprobs: np.ndarray
    lengths: np.ndarray
    finish: np.ndarray
    slots: int
    steps: int
    slot_steps: int


def device_queue(rows: RowStarts, cache_rows: int, dp: int) -> tuple[Queue, np.ndarray, np.ndarray]:
    """The refill `Queue` of `rows` over dp devices (each row on the device holding its cache row,
    in input order there; per-device length bucketed) and int[N] the queue position of each row,
    int[dp] rows per device."""
    per = cache_rows // dp
    device = rows.row // per
    count = np.bincount(device, minlength=dp)
    nd = bucket(int(count.max()))
    rank = np.zeros(len(device), np.int64)
    for d in range(dp):
        mine = device == d
        rank[mine] = np.arange(int(mine.sum()))
    at = device * nd + rank
    n = dp * nd
    src = np.zeros(n, np.int64)  # input row of each queue position (0 on padding)
    src[at] = np.arange(len(at))
    real = np.zeros(n, bool)
    real[at] = True
    fill = lambda x, pad: np.where(real, np.asarray(x)[src], pad).astype(np.int32)
    queue = Queue(fill(rows.row % per, 0), fill(rows.pos, 1), fill(rows.col, 0), rows.keys[jnp.asarray(src)],
                  fill(rows.budget, 0), count.astype(np.int32))
    return queue, at, count


class Prepared(NamedTuple):
    """A refill call ready to run: its queue, static plan, and where each input row lands."""

    queue: Queue
    plan: RefillPlan
    at: np.ndarray  # int[N] queue position of each input row
    count: np.ndarray  # int[dp] rows per device


def prepare(env: RolloutEnv, rows: RowStarts, cache_rows: int, slots_cap: int) -> Prepared:
    """The device queue of `rows` (continuing a cache of `cache_rows` rows) and the refill plan:
    at most `slots_cap` slots over all devices (a multiple of the data-parallel size, never more
    than the busiest device needs), refills per device per step `env.refills_per_step` (default
    its slots // 8), `env.tail_halvings`, cache room for the longest prefix + budget."""
    dp = data_parallel_size()
    queue, at, count = device_queue(rows, cache_rows, dp)
    rl = min(bucket(slots_cap, multiple_of=dp) // dp, bucket(int(count.max())))
    refills = env.refills_per_step
    refills = max(1, rl // 8) if refills is None else max(1, min(int(refills), rl))
    room = cache_room(int((rows.pos + rows.budget).max()))
    halvings = TAIL_HALVINGS if env.tail_halvings is None else env.tail_halvings
    return Prepared(queue, RefillPlan(rl * dp, room, refills, halvings), at, count)


def unpack(prep: Prepared, res) -> Decoded:
    """`Decoded` of a refill call's output (fetched to every host), in the input rows' order."""
    res = to_host(res)
    at, slots = prep.at, prep.plan.slots
    refilled = int(np.maximum(prep.count - slots // len(prep.count), 0).sum())  # rows started after the first fill
    slot_steps = int(res.steps)  # `refill.decode_rows` counts slot-steps
    return Decoded(res.tokens[at], res.logprobs[at], res.lengths[at], res.finish_reason[at], slots,
                   slot_steps // slots, slot_steps + refilled)


@functools.partial(jax.jit, static_argnames=("cfg", "scfg", "plan"))
def _refill_jit(params, traj: TrajectoryCache, queue: Queue, stop_table, *, cfg, scfg, plan: RefillPlan):
    """Decode the queue's rows with `plan.slots` slots refilled from the trajectory cache."""
    source = Source(traj.cache.k, traj.cache.v, traj.hidden)
    return decode_rows(params, cfg, scfg, source, queue, plan, stop_table)


def stop_array(env: RolloutEnv):
    return None if env.stops is None else jnp.asarray(env.stops.next_state)


def continue_rows(env: RolloutEnv, traj: TrajectoryCache, rows: RowStarts, slots_cap: int) -> Decoded:
    """Decode `rows` (continuations of prefixes cached in `traj`) with at most `slots_cap` slots,
    refilled as rows finish, each device continuing the rows whose cache row it holds."""
    prep = prepare(env, rows, traj.cache.k.shape[1], slots_cap)
    return unpack(prep, _refill_jit(env.params, traj, prep.queue, stop_array(env), cfg=env.model_cfg, scfg=env.scfg,
                                    plan=prep.plan))


# The jitted cores under public names, for ahead-of-time lowering with abstract arguments
# (`vinejax.tools.plan`): same arguments as `_trajectory_jit` / `_refill_jit`.
trajectory_program = _trajectory_jit
refill_program = _refill_jit
