"""One RL iteration's data: episodes → rewards → steps → values → advantages → `RolloutBatch`.

VinePPO values come from K Monte Carlo continuations per state (`sampling.continue_from_prefixes`,
which reuses the trajectory's KV cache); PPO's from the critic (GAE); GRPO / RLOO from the group
of samples of one problem.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from vinejax import sampling
from vinejax.rl import advantages as adv_lib
from vinejax.rl.batch import RolloutBatch
from vinejax.rl.pipeline import vine_advantages_from_mc
from vinejax.tasks.steps import step_token_starts, token_char_offsets
from vinejax.train import encode, update
from vinejax.train.batching import to_device_batch
from vinejax.train.episodes import (Episodes, grade_episodes, response_texts, sample_episodes, sampling_config,
                                    strip_eos)
from vinejax.train.metrics import Timer, describe


def token_offsets(tokenizer, ids: list, text: str) -> list[tuple[int, int]]:
    """(start, end) character span in `text` (= decode(ids)) of each sampled token.

    Fast path: re-tokenizing `text` usually gives back `ids`, and then its offsets apply; otherwise
    (a sampled tokenization the tokenizer would not produce) `tasks.steps.token_char_offsets`
    decodes token by token.
    """
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if list(enc["input_ids"]) == list(ids):
        return [tuple(o) for o in enc["offset_mapping"]]
    return token_char_offsets(tokenizer, ids)


def episode_steps(ctx, ep: Episodes, max_steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Absolute token column where each step starts, int32[B, S], and step counts int32[B].

    A response with no text (only EOS) is one step. EOS and a trailing stop sequence belong to
    the last step (their characters lie at or past the end of the text).
    """
    starts_list = []
    for r, text in enumerate(ep.texts):
        ids = strip_eos(ctx, ep.response_ids(r))
        full = ctx.tokenizer.decode(ids, skip_special_tokens=True)
        offsets = token_offsets(ctx.tokenizer, ids, full) if ids else []
        steps = ctx.task.split_steps(text) if text else []
        rel = step_token_starts(steps, offsets) if steps and offsets else [0]
        starts_list.append([ep.prompt_lens[r] + s for s in rel])
    width = max(len(s) for s in starts_list) if max_steps is None else max_steps
    step_starts = encode.pad_rows(starts_list, max(width, 1), 0)
    num_steps = np.array([min(len(s), width) for s in starts_list], np.int32)
    return step_starts, num_steps


def mc_rewards(ctx, params, ep: Episodes, step_starts: np.ndarray, num_steps: np.ndarray, rng: jax.Array):
    """Rewards of K continuations from every estimated state: f32[B, S, K] and its mask.

    States are the prefixes `tokens[b, :step_starts[b, i]]` for i < num_steps[b] (capped by
    `vineppo.max_estimated_states`). Continuations share the episode's remaining token budget.
    """
    cfg = ctx.cfg
    k = cfg.vineppo.num_rollouts
    b, s = step_starts.shape
    cap = cfg.vineppo.max_estimated_states
    estimated = np.arange(s)[None] < num_steps[:, None]
    if cap >= 0:
        estimated &= np.arange(s)[None] <= cap
    max_new = cfg.sampling.max_new_tokens
    budgets = np.maximum(max_new - (step_starts - ep.prompt_lens[:, None]), 1)  # [B, S]
    scfg = sampling_config(ctx, cfg.sampling.temperature, cfg.sampling.top_p, max_new, top_k=cfg.sampling.top_k)
    with ctx.mesh_context():
        out = sampling.continue_from_prefixes(
            params, ctx.model_cfg, ep.tokens, ep.total_lens, step_starts, rng, scfg, k,
            state_mask=estimated, budgets=budgets, max_rows_per_chunk=cfg.vineppo.chunk_rows)
    rows, cols = np.nonzero(estimated)
    ids = []
    for r, c in zip(rows, cols):
        prefix = ep.tokens[r, ep.prompt_lens[r] : step_starts[r, c]].tolist()
        ids += [strip_eos(ctx, prefix + out.tokens[r, c, j, : out.lengths[r, c, j]].tolist()) for j in range(k)]
    texts = response_texts(ctx, ids)
    finished = (out.finish_reason[rows, cols] != sampling.FINISH_LENGTH).reshape(-1)  # [N * K]
    answers = [ep.answers[r] for r in rows for _ in range(k)]
    graded = ctx.task.grade_batch(texts, answers, num_workers=cfg.task.grade_workers)
    rewards = np.zeros((b, s, k), np.float32)
    rewards[rows, cols] = np.where(finished, graded, 0.0).reshape(len(rows), k)
    mask = np.repeat(estimated[:, :, None], k, axis=2)
    stats = {"mc/" + key: float(v) for key, v in out.stats.items()}
    return rewards, mask, stats


@functools.partial(jax.jit, static_argnames=("model_cfg", "temperature"))
def _logprobs(params, tokens, *, model_cfg, temperature):
    return update.sequence_logprobs(params, model_cfg, tokens, temperature)


@functools.partial(jax.jit, static_argnames=("model_cfg",))
def _values(params, tokens, *, model_cfg):
    return update.critic_values(params, model_cfg, tokens)


def score_rows(ctx, fn, params, tokens: np.ndarray, rows_per_call: int) -> np.ndarray:
    """Apply a jitted scorer (`_logprobs` / `_values`) over row chunks; f32[B, T] on host."""
    out = []
    for start in range(0, tokens.shape[0], rows_per_call):
        chunk = tokens[start : start + rows_per_call]
        n = chunk.shape[0]
        padded = np.pad(chunk, ((0, rows_per_call - n), (0, 0)))
        with ctx.mesh_context():
            out.append(np.asarray(fn(params, to_device_batch(ctx, padded)))[:n])
    return np.concatenate(out)


def build_batch(ctx, params, ref_params, critic_params, problems, rng: jax.Array, timer: Timer):
    """Sample, grade and score one iteration's episodes → (host RolloutBatch, metrics, episodes).

    `critic_params` (PPO only, else None) gives the token values for GAE.
    """
    cfg = ctx.cfg
    s = cfg.sampling
    scfg = sampling_config(ctx, s.temperature, s.top_p, s.max_new_tokens, top_k=s.top_k)
    rng_sample, rng_mc = jax.random.split(rng)
    with timer("sample"):
        ep = sample_episodes(ctx, params, problems, scfg, s.samples_per_problem, rng_sample, s.batch_size)
    with timer("grade"):
        rewards = grade_episodes(ctx, ep)
    width = encode.bucket(int(ep.total_lens.max()))  # trim the unused tail of the decode budget
    tokens = encode.pad_rows(ep.tokens, width, encode.pad_token_id(ctx.tokenizer))
    mask = encode.pad_rows(ep.response_mask, width, False, bool)
    metrics = {"rewards/mean": rewards.mean(), "generation/finished_frac": ep.finished.mean()}
    metrics.update(describe("generation/length", ep.total_lens - ep.prompt_lens))
    extra = {}
    rows_per_call = s.batch_size
    score = functools.partial(_logprobs, model_cfg=ctx.model_cfg, temperature=s.temperature)
    with timer("logprobs"):
        old_lp = score_rows(ctx, score, params, tokens, rows_per_call)
        ref_lp = score_rows(ctx, score, ref_params, tokens, rows_per_call)

    if cfg.algo == "vineppo":
        with timer("steps"):
            step_starts, num_steps = episode_steps(ctx, ep)
        with timer("mc"):
            mc_r, mc_m, mc_stats = mc_rewards(ctx, params, ep, step_starts, num_steps, rng_mc)
        cap = cfg.vineppo.max_estimated_states
        adv, m = vine_advantages_from_mc(mc_r, mc_m, rewards, step_starts, num_steps, jnp.asarray(mask),
                                         None if cap < 0 else cap)
        metrics.update(mc_stats)
        metrics.update(describe("steps/count", num_steps))
        extra = dict(step_starts=step_starts, num_steps=num_steps)
    elif cfg.algo == "ppo":
        with timer("values"):
            values = score_rows(ctx, functools.partial(_values, model_cfg=ctx.critic_cfg), critic_params,
                                tokens, rows_per_call)
        token_rewards = adv_lib.last_token_rewards(jnp.asarray(rewards), jnp.asarray(mask))
        adv, returns = adv_lib.gae_advantages(jnp.asarray(values), token_rewards, jnp.asarray(mask),
                                              cfg.ppo.gae_gamma, cfg.ppo.gae_lambda)
        m = {"critic/values_mean": float(values[mask].mean()) if mask.any() else 0.0}
        extra = dict(returns=np.asarray(returns), old_values=values)
    else:
        group = s.samples_per_problem
        seq = (adv_lib.grpo_advantages if cfg.algo == "grpo" else adv_lib.rloo_advantages)(
            jnp.asarray(rewards), group_size=group)
        adv, m = adv_lib.sequence_to_tokens(seq, jnp.asarray(mask)), {}
    metrics.update({k: float(v) for k, v in jax.device_get(m).items()})
    adv = np.asarray(adv, np.float32)
    metrics.update(describe("advantages", adv, mask))
    batch = RolloutBatch(tokens=tokens, response_mask=mask, old_logprobs=old_lp, ref_logprobs=ref_lp,
                         advantages=adv, rewards=rewards, **extra)
    return batch, metrics, ep
