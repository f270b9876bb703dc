"""`generate`: jitted batched sampling from right-padded prompts with a KV cache."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from vinejax.model import decode as model_decode
from vinejax.model import llama
from vinejax.sampling.core import GenerationOutput, Rows, bucket, cache_room, decode
from vinejax.sampling.env import RolloutEnv
from vinejax.sharding import data_parallel_size


def row_keys(rng: jax.Array, ids) -> jax.Array:
    """Typed PRNG keys [R] = fold_in(rng, ids[r]): one independent stream per output row."""
    if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.wrap_key_data(rng)
    return jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.asarray(ids, jnp.uint32))


@functools.partial(jax.jit, static_argnames=("cfg", "scfg", "num_samples", "room"))
def _generate_jit(params, prompts, prompt_lens, budget, keys, stop_table, *, cfg, scfg, num_samples, room):
    """prompts int32[Bp, P] right-padded; prompt_lens [Bp]; budget/keys [Bp * num_samples];
    stop_table: None or int32[S, V] (`StopTable.next_state`).

    room: cache slots (>= max(prompt_len + budget)); prompt padding beyond it is dropped.
    """
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
        rows = lambda x: jnp.repeat(x, num_samples, axis=0)
        if scfg.unroll_layers:
            cache = jax.tree.map(rows, cache)
        else:
            rep = lambda x: jnp.repeat(x, num_samples, axis=1)
            cache = llama.KVCache(rep(cache.k), rep(cache.v), rows(cache.lengths))
        logits0 = rows(logits0)
    return decode(params, cfg, scfg, cache, logits0, Rows(keys, budget), stop_table, weights)


def generate(env: RolloutEnv, prompts, prompt_lens, rng: jax.Array, *, num_samples: int = 1,
             max_new=None) -> GenerationOutput:
    """Sample responses to right-padded prompts with `env`'s policy, sampling settings and stops.

    env.params may be sharded (under `jax.set_mesh` + logical-axis rules the batch is sharded
    over the data axes); prompts: int[Bp, P] right-padded; prompt_lens: int[Bp] (>= 1); rng: PRNG
    key; num_samples: responses per prompt (one prefill shared by all of them; output row
    b * num_samples + s); max_new: optional int[Bp * num_samples] per-row token budgets (capped
    at scfg.max_new_tokens; default: `env.budgets` of the prompt lengths); env.stops: a
    `stops.stop_automaton` table (stop strings matched on the response text; a row stops at the
    token that completes one). Batch and prompt length are bucketed (`core.bucket`) so different
    batches reuse a handful of compiled programs. Row r's randomness is fold_in(rng, r).
    """
    params, cfg, scfg, stops = env.params, env.model_cfg, env.scfg, env.stops
    prompts = np.asarray(prompts, np.int32)
    prompt_lens = np.asarray(prompt_lens, np.int32)
    bp, p = prompts.shape
    if bp == 0:
        raise ValueError("empty batch")
    if prompt_lens.min() < 1 or prompt_lens.max() > p:
        raise ValueError("prompt_lens must be in [1, prompts.shape[1]]")
    rows = bp * num_samples
    bb = bucket(bp, multiple_of=data_parallel_size())
    pb = bucket(int(prompt_lens.max()), minimum=16)
    tok = np.full((bb, pb), scfg.pad_id, np.int32)
    tok[:bp, : min(p, pb)] = prompts[:, :pb]
    lens = np.ones((bb,), np.int32)
    lens[:bp] = prompt_lens
    budget = np.zeros((bb * num_samples,), np.int32)
    if max_new is None:
        max_new = np.repeat(env.budgets(prompt_lens), num_samples)
    budget[:rows] = np.minimum(np.asarray(max_new), scfg.max_new_tokens)
    keys = row_keys(rng, np.arange(bb * num_samples))
    need = int((np.repeat(lens, num_samples) + budget).max())
    room = min(pb + scfg.max_new_tokens, cache_room(need))  # attend over needed slots only
    table = None if stops is None else jnp.asarray(stops.next_state)
    out = _generate_jit(params, tok, lens, budget, keys, table, cfg=cfg, scfg=scfg, num_samples=num_samples, room=room)
    if bb * num_samples == rows:
        return out
    return GenerationOutput(*(x[:rows] for x in out[:4]), out.steps)


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


# The jitted core of `generate` (prefill + decode loop) under a public name, for ahead-of-time
# lowering with abstract arguments (`vinejax.tools.plan`): same arguments as `_generate_jit`.
generate_program = _generate_jit
