"""The values phase of an iteration: VinePPO's Monte Carlo state values (K continuations from
every step boundary, graded like episodes) and PPO's critic token values."""
from __future__ import annotations

import jax
import numpy as np

from vinejax import sampling
from vinejax.multihost import split_rows
from vinejax.rl import values as values_lib
from vinejax.train.episodes import Episodes, finish_response, token_budgets
from vinejax.train.scoring import score_rows, value_scorer


def mc_rewards(params, model_cfg, tokenizer, task, ep: Episodes, step_starts: np.ndarray, num_steps: np.ndarray,
               rng: jax.Array, scfg: sampling.SamplingConfig, k: int, cap: int, chunk_rows: int, workers: int,
               context_size: int, stops=None):
    """Rewards of K continuations from every estimated state: f32[B, S, K] and its mask, plus stats.

    States are the prefixes `tokens[b, :step_starts[b, i]]` for i < num_steps[b] (only i <= cap
    when cap >= 0). Each continuation may write min(max_new_tokens, context_size − prefix) tokens
    (the official budget), not what is left of its episode's own budget.
    """
    b, s = step_starts.shape
    estimated = np.arange(s)[None] < num_steps[:, None]
    if cap >= 0:
        estimated &= np.arange(s)[None] <= cap
    budgets = token_budgets(step_starts, scfg.max_new_tokens, context_size)  # [B, S]
    out = sampling.continue_from_prefixes(
        params, model_cfg, ep.tokens, ep.total_lens, step_starts, rng, scfg, k,
        state_mask=estimated, budgets=budgets, max_rows_per_chunk=chunk_rows, stops=stops)
    rows, cols = np.nonzero(estimated)
    texts = []  # prefix + continuation, cut at a stop string in the continuation
    for r, c in zip(rows, cols):
        prefix = ep.tokens[r, ep.prompt_lens[r] : step_starts[r, c]].tolist()
        texts += [finish_response(tokenizer, stops, prefix + out.tokens[r, c, j, : out.lengths[r, c, j]].tolist(),
                                  search_from=len(prefix))[0] for j in range(k)]
    finished = (out.finish_reason[rows, cols] != sampling.FINISH_LENGTH).reshape(-1)  # [N * K]
    problems = [ep.problems[r] for r in rows for _ in range(k)]
    graded = split_rows(lambda t, p: task.grade_batch(t, p, num_workers=workers), texts, problems)  # shared out
    rewards = np.zeros((b, s, k), np.float32)
    rewards[rows, cols] = np.where(finished, graded, 0.0).reshape(len(rows), k)
    mask = np.repeat(estimated[:, :, None], k, axis=2)
    stats = {"mc/" + key: float(v) for key, v in out.stats.items()}
    return rewards, mask, stats


def mc_state_values(params, model_cfg, tokenizer, task, ep: Episodes, step_starts: np.ndarray,
                    num_steps: np.ndarray, rng: jax.Array, scfg: sampling.SamplingConfig, k: int, cap: int,
                    chunk_rows: int, workers: int, context_size: int, stops=None) -> tuple[np.ndarray, dict]:
    """V̂(s) f32[B, S] of every state (the mean reward of its K continuations) and `mc/*` metrics."""
    rewards, mask, stats = mc_rewards(params, model_cfg, tokenizer, task, ep, step_starts, num_steps, rng, scfg,
                                      k, cap, chunk_rows, workers, context_size, stops)
    est = values_lib.mc_values(rewards, mask)
    states = values_lib.estimated_state_mask(num_steps, step_starts.shape[1], None if cap < 0 else cap)
    metrics = {key: float(v) for key, v in values_lib.mc_value_metrics(est, states).items()}
    return np.asarray(est.value), stats | metrics


def critic_token_values(mesh, critic_params, critic_cfg, tokens: np.ndarray, rows_per_call: int) -> np.ndarray:
    """f32[B, T] critic values of every prefix (PPO), aligned like log-probs."""
    scorer = lambda p, t: value_scorer(p, t, model_cfg=critic_cfg)
    return score_rows(mesh, scorer, critic_params, tokens, rows_per_call)
