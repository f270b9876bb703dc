"""Pure RL numerics of vinejax: MC values, advantages, losses, the rollout batch contract.

Modules (each a handful of pure, jittable functions over fixed-shape masked arrays):
  values     MC value estimates V̂(s) and standard errors from K continuations per state
  advantages VinePPO step advantages, GAE, GRPO, RLOO, masked whitening
  logprobs   token log-probs / entropies from logits (temperature, vocab chunking)
  losses     PPO-clip, KL (k1/k2/k3), clipped value loss, entropy, combined VinePPO loss,
             RestEM sequence-mean NLL, DPO+ (DPO-Positive)
  baseline_data  RestEM fine-tuning rows and DPO+ preference pairs from graded samples (numpy)
  batch      RolloutBatch pytree (the sampler <-> trainer contract)
  pipeline   MC rewards -> token advantages; per-batch whitening
"""
from vinejax.rl.advantages import (gae_advantages, grpo_advantages, last_token_rewards,
                                   masked_mean, masked_var, masked_whiten, rloo_advantages,
                                   sequence_to_tokens, steps_to_tokens, vine_step_advantages,
                                   vine_token_advantages)
from vinejax.rl.baseline_data import dpo_positive_pairs, restem_select
from vinejax.rl.batch import RolloutBatch, pad_batch
from vinejax.rl.logprobs import entropy_from_logits, token_logprobs, token_logprobs_and_entropy
from vinejax.rl.losses import (PolicyLossConfig, add_metrics, clipped_value_loss, dpo_positive_loss,
                               dpo_positive_loss_from_sums, entropy_sum, kl_loss, kl_penalty,
                               kl_reward_penalty, ppo_clip_loss, reduce_metrics, sequence_mean_nll,
                               should_skip, vineppo_policy_loss)
from vinejax.rl.pipeline import ppo_gae_targets, vine_advantages_from_mc, whiten_advantages
from vinejax.rl.values import (MCValues, estimated_state_mask, mc_value_metrics, mc_values,
                               state_mask)

__all__ = [n for n in dir() if not n.startswith("_")]
