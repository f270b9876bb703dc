"""`generate`: jitted batched sampling from right-padded prompts with a KV cache.

Every row decodes at once (one prefill per prompt, its cache repeated per sample), or, when there
are more rows than `RolloutEnv.decode_rows`, through the refill loop: the prompts' cache is
computed once and each of `decode_rows` slots takes the next waiting row when its row finishes
(`continuation.continue_rows`), so memory follows `decode_rows`, not the number of prompts.
Row (prompt b, sample s) draws with a key of the prompt's id and s only: the same responses
whichever way the rows are batched.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from vinejax.model import decode as model_decode
from vinejax.model import llama
from vinejax.sampling.continuation import (
    RowStarts,
    TrajectoryCache,
    balanced_rows,
    prepare,
    stop_array,
    trajectory_pass,
    unpack,
)
from vinejax.sampling.core import GenerationOutput, Rows, bucket, cache_room, decode
from vinejax.sampling.env import RolloutEnv
from vinejax.sampling.refill import Queue, RefillPlan, Source, decode_rows
from vinejax.sharding import data_parallel_size


def row_keys(rng: jax.Array, ids) -> jax.Array:
    """Typed PRNG keys [R] = fold_in(rng, ids[r]): one independent stream per output row."""
    if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.wrap_key_data(rng)
    return jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.asarray(ids, jnp.uint32))


def sample_keys(rng: jax.Array, ids, num_samples: int) -> jax.Array:
    """Typed PRNG keys [len(ids) · num_samples]: sample s of the prompt with id ids[b] (row
    b · num_samples + s) draws with fold_in(fold_in(rng, ids[b]), s)."""
    base = jnp.repeat(row_keys(rng, ids), num_samples)
    samples = jnp.tile(jnp.arange(num_samples, dtype=jnp.uint32), len(ids))
    return jax.vmap(jax.random.fold_in)(base, samples)


@functools.partial(jax.jit, static_argnames=("cfg", "scfg", "num_samples", "room"))
def _generate_jit(params, prompts: tuple, rows: Rows, stop_table, *, cfg, scfg, num_samples, room):
    """prompts = (tokens int32[Bp, P] right-padded, lengths [Bp]); rows: keys and budgets of the
    Bp * num_samples rows; stop_table: None or int32[S, V] (`StopTable.next_state`).

    room: cache slots (>= max(prompt_len + budget)); prompt padding beyond it is dropped.
    """
    prompts, prompt_lens = prompts
    bp, p = prompts.shape
    prompts = nn.with_logical_constraint(prompts, ("batch", "length"))
    weights = None
    if scfg.unroll_layers:  # per-layer caches written by the prefill itself
        weights = model_decode.decode_weights(params, cfg)
        logits0, cache = model_decode.prefill(params, weights, cfg, prompts, prompt_lens, room)
    else:
        cache = llama.constrain_cache(llama.init_cache(cfg, bp, room))
        _, hidden, cache = llama.forward_cached(params, cfg, prompts, cache, new_lengths=prompt_lens)
        last = jnp.take_along_axis(hidden, (prompt_lens - 1)[:, None, None], axis=1)[:, 0]  # [Bp, D]
        logits0 = llama.lm_logits(params, cfg, last)  # [Bp, V]
    if num_samples > 1:  # one prefill, shared by every sample of a prompt
        per_sample = lambda x: jnp.repeat(x, num_samples, axis=0)
        if scfg.unroll_layers:
            cache = jax.tree.map(per_sample, cache)
        else:
            rep = lambda x: jnp.repeat(x, num_samples, axis=1)
            cache = llama.KVCache(rep(cache.k), rep(cache.v), per_sample(cache.lengths))
        logits0 = per_sample(logits0)
    return decode(params, cfg, scfg, cache, logits0, rows, stop_table, weights)


@functools.partial(jax.jit, static_argnames=("cfg", "scfg", "plan"))
def _generate_refill_jit(params, prompts: tuple, queue: Queue, stop_table, *, cfg, scfg, plan: RefillPlan):
    """The cache of prompts = (tokens int32[Bb, P] right-padded, rows placed over the devices as
    the queue expects; lengths [Bb]), then the queue's rows decoded from it with `plan.slots`
    refilled slots."""
    traj: TrajectoryCache = trajectory_pass(params, *prompts, cfg)
    return decode_rows(params, cfg, scfg, Source(traj.cache.k, traj.cache.v, traj.hidden), queue, plan, stop_table)


def generate(env: RolloutEnv, prompts, prompt_lens, rng: jax.Array, *, num_samples: int = 1,
             max_new=None, ids=None) -> GenerationOutput:
    """Sample responses to right-padded prompts with `env`'s policy, sampling settings and stops.

    env.params may be sharded (under `jax.set_mesh` + logical-axis rules the batch is sharded
    over the data axes); prompts: int[Bp, P] right-padded; prompt_lens: int[Bp] (>= 1); rng: PRNG
    key; num_samples: responses per prompt (output row b * num_samples + s); max_new: optional
    int[Bp * num_samples] per-row token budgets (capped at scfg.max_new_tokens; default:
    `env.budgets` of the prompt lengths); ids: int[Bp] stable ids of the prompts (default
    0..Bp−1): row (b, s) draws with fold_in(fold_in(rng, ids[b]), s) (`sample_keys`), so a prompt's
    responses do not depend on the other prompts of the call; env.stops: a `stops.stop_automaton`
    table (stop strings matched on the response text; a row stops at the token that completes
    one). `env.decode_rows` > 0 caps the rows decoded at once (module docstring). Batch and prompt
    length are bucketed (`core.bucket`) so different batches reuse a handful of compiled programs.
    """
    params, cfg, scfg, stops = env.params, env.model_cfg, env.scfg, env.stops
    prompts = np.asarray(prompts, np.int32)
    prompt_lens = np.asarray(prompt_lens, np.int32)
    bp, p = prompts.shape
    if bp == 0:
        raise ValueError("empty batch")
    if prompt_lens.min() < 1 or prompt_lens.max() > p:
        raise ValueError("prompt_lens must be in [1, prompts.shape[1]]")
    rows, dp = bp * num_samples, data_parallel_size()
    bb = bucket(bp, multiple_of=dp)
    pb = bucket(int(prompt_lens.max()), minimum=16)
    if max_new is None:
        max_new = np.repeat(env.budgets(prompt_lens), num_samples)
    budget = np.minimum(np.asarray(max_new, np.int32), scfg.max_new_tokens)  # [rows]
    keys = sample_keys(rng, np.arange(bp) if ids is None else np.asarray(ids), num_samples)
    table = None if stops is None else jnp.asarray(stops.next_state)
    if 0 < env.decode_rows and bucket(env.decode_rows, multiple_of=dp) < rows:
        return _generate_refill(env, prompts, prompt_lens, budget, keys, num_samples, (bb, pb))
    tok = np.full((bb, pb), scfg.pad_id, np.int32)
    tok[:bp, : min(p, pb)] = prompts[:, :pb]
    lens = np.ones((bb,), np.int32)
    lens[:bp] = prompt_lens
    padded = np.zeros((bb * num_samples,), np.int32)
    padded[:rows] = budget
    if bb > bp:
        keys = jnp.concatenate([keys, jnp.broadcast_to(keys[:1], ((bb - bp) * num_samples,))])
    need = int((np.repeat(lens, num_samples) + padded).max())
    room = min(pb + scfg.max_new_tokens, cache_room(need))  # attend over needed slots only
    out = _generate_jit(params, (tok, lens), Rows(keys, padded), table, cfg=cfg, scfg=scfg, num_samples=num_samples,
                        room=room)
    if bb * num_samples == rows:
        return out
    return GenerationOutput(*(x[:rows] for x in out[:4]), out.steps)


def _generate_refill(env: RolloutEnv, prompts: np.ndarray, prompt_lens: np.ndarray, budget: np.ndarray, keys,
                     num_samples: int, shape: tuple) -> GenerationOutput:
    """`generate` through the refill loop with `env.decode_rows` slots: the prompts' cache of
    `shape` (bucketed rows, columns), each prompt's row on the device that continues its samples
    (prompts spread by their rows' budgets)."""
    (bp, p), (bb, pb) = prompts.shape, shape
    row_budget = budget.reshape(bp, num_samples)
    place = balanced_rows(row_budget.sum(1), bb, data_parallel_size())  # [Bp] cache row of each prompt
    tok = np.full((bb, pb), env.scfg.pad_id, np.int32)
    tok[place, : min(p, pb)] = prompts[:, :pb]
    lens = np.ones((bb,), np.int32)
    lens[place] = prompt_lens
    prompt_of = np.repeat(np.arange(bp), num_samples)
    starts = RowStarts(place[prompt_of], prompt_lens[prompt_of], prompt_lens[prompt_of] - 1, budget, keys)
    prep = prepare(env, starts, bb, env.decode_rows)
    res = unpack(prep, _generate_refill_jit(env.params, (tok, lens), prep.queue, stop_array(env), cfg=env.model_cfg,
                                            scfg=env.scfg, plan=prep.plan))
    return GenerationOutput(res.tokens, res.logprobs, res.lengths, res.finish, res.steps)  # full-width iterations


def assemble_rows(prompts, prompt_lens, out: GenerationOutput, pad_id: int = 0, num_samples: int = 1):
    """Trajectory rows for training: prompt then response, contiguous from column 0, right-padded.

    prompts int[Bp, P], prompt_lens [Bp] (repeated num_samples times to match out's rows).
    Returns (tokens int32[B, P + N], logprobs f32[B, P + N] aligned with tokens —
    logprobs[b, t] = log p(tokens[b, t] | tokens[b, :t]) on response tokens, 0 elsewhere —
    prompt_lens int32[B], total_lens int32[B]).
    """
    prompts = jnp.repeat(jnp.asarray(prompts, jnp.int32), num_samples, axis=0)
    plen = jnp.repeat(jnp.asarray(prompt_lens, jnp.int32), num_samples, axis=0)
    b, p = prompts.shape
    n = out.tokens.shape[1]
    col = jnp.arange(p + n)[None]  # [1, P+N]
    r = col - plen[:, None]  # response index of each column
    valid = (r >= 0) & (r < out.lengths[:, None])
    rc = jnp.clip(r, 0, n - 1)
    resp = jnp.take_along_axis(out.tokens, rc, axis=1)
    prm = jnp.take_along_axis(jnp.pad(prompts, ((0, 0), (0, n))), jnp.minimum(col, p + n - 1).repeat(b, 0), axis=1)
    tokens = jnp.where(col < plen[:, None], prm, jnp.where(valid, resp, pad_id)).astype(jnp.int32)
    logprobs = jnp.where(valid, jnp.take_along_axis(out.logprobs, rc, axis=1), 0.0)
    return tokens, logprobs, plen, plen + out.lengths


# The jitted cores of `generate` under public names, for ahead-of-time lowering with abstract
# arguments (`vinejax.tools.plan`): every row at once (same arguments as `_generate_jit`) and
# through the refill loop (as `_generate_refill_jit`).
generate_program = _generate_jit
generate_refill_program = _generate_refill_jit
