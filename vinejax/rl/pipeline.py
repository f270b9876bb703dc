"""Glue for one VinePPO iteration: MC rollout rewards -> token advantages; batch whitening.

    V̂ = mc_values(mc_rewards, mc_mask).value                       [B, S]
    A_step = vine_step_advantages(V̂, R, L, max_value_step)          [B, S]
    A_tok = steps_to_tokens(A_step, step_starts, L, response_mask)  [B, T]
Whitening happens later, per optimizer batch (VINEPPO.md §1.8), with ``whiten_advantages``
on the full optimizer batch *before* it is split into micro-batches.
"""
from __future__ import annotations

import jax

from vinejax.rl import advantages as adv_lib
from vinejax.rl import values as values_lib
from vinejax.rl.batch import RolloutBatch


def vine_advantages_from_mc(mc_rewards: jax.Array, mc_mask: jax.Array, rewards: jax.Array,
                            step_starts: jax.Array, num_steps: jax.Array,
                            response_mask: jax.Array, max_value_step: int | None = None):
    """Token advantages f32[B, T] (unwhitened) and logging metrics from MC rollouts.

    Args: mc_rewards f32[B, S, K], mc_mask bool[B, S, K], rewards f32[B], step_starts int32[B, S],
      num_steps int32[B], response_mask bool[B, T]; ``max_value_step`` static (GSM8K: 25).
    Returns: (advantages f32[B, T], metrics dict of scalars incl. ``mc/*`` and
      ``advantages/step_mean``, ``advantages/step_abs_mean``).
    """
    S = mc_rewards.shape[1]
    est = values_lib.mc_values(mc_rewards, mc_mask)
    step_adv = adv_lib.vine_step_advantages(est.value, rewards, num_steps, max_value_step)
    tok = adv_lib.steps_to_tokens(step_adv, step_starts, num_steps, response_mask)
    states = values_lib.estimated_state_mask(num_steps, S, max_value_step)
    metrics = values_lib.mc_value_metrics(est, states)
    steps = values_lib.state_mask(num_steps, S)
    metrics["advantages/step_mean"] = adv_lib.masked_mean(step_adv, steps)
    metrics["advantages/step_abs_mean"] = adv_lib.masked_mean(abs(step_adv), steps)
    return tok, metrics


def whiten_advantages(batch: RolloutBatch, shift_mean: bool = True) -> RolloutBatch:
    """Batch with token advantages whitened over its response tokens (masked mean, unbiased std)."""
    return batch.replace(advantages=adv_lib.masked_whiten(batch.advantages, batch.response_mask,
                                                          shift_mean=shift_mean))


def ppo_gae_targets(values: jax.Array, rewards: jax.Array, response_mask: jax.Array,
                    gamma: float = 1.0, lam: float = 1.0,
                    kl_penalties: jax.Array | None = None):
    """PPO baseline: token rewards (R on the last response token, minus optional per-token
    ``kl_penalties`` from ``losses.kl_reward_penalty``) -> GAE advantages and critic returns.

    Args: values f32[B, T] critic values aligned like log-probs, rewards f32[B],
      response_mask bool[B, T], kl_penalties f32[B, T] or None. Paper: γ = λ = 1, no KL penalty.
    Returns: (advantages f32[B, T], returns f32[B, T]), unwhitened.
    """
    token_rewards = adv_lib.last_token_rewards(rewards, response_mask)
    if kl_penalties is not None:
        token_rewards = token_rewards - kl_penalties
    return adv_lib.gae_advantages(values, token_rewards, response_mask, gamma, lam)
