"""Pure RL numerics of vinejax: MC values, advantages, losses, the rollout batch contract.

Modules (each a handful of pure, jittable functions over fixed-shape masked arrays):
  values     MC value estimates V̂(s) and standard errors from K continuations per state
  adaptive   adaptive K: per-state rounds with an exactly unbiased stop rule (``vineppo.adaptive``)
  allocation a budget-global, exactly unbiased allocation of an iteration's MC rollouts (two rounds)
  advantages VinePPO step advantages, GAE, GRPO, RLOO (the estimators of ``vinejax.train.estimators``
             call them); masked whitening of an optimizer batch (``whiten_batch``)
  logprobs   token log-probs / entropies from logits (temperature, vocab chunking)
  losses     PPO-clip, KL (k1/k2/k3), clipped value loss, entropy, the combined ``policy_loss``,
             RestEM sequence-mean NLL, DPO+ (DPO-Positive)
  baseline_data  RestEM fine-tuning rows and DPO+ preference pairs from graded samples (numpy)
  batch      RolloutBatch pytree (the sampler <-> trainer contract), PairBatch (DPO+ pairs)
"""
from vinejax.rl.advantages import (
                                   gae_advantages,
                                   grpo_advantages,
                                   last_token_rewards,
                                   masked_mean,
                                   masked_var,
                                   masked_whiten,
                                   ppo_gae_targets,
                                   rloo_advantages,
                                   sequence_to_tokens,
                                   steps_to_tokens,
                                   vine_step_advantages,
                                   whiten_batch,
)
from vinejax.rl.baseline_data import dpo_positive_pairs, restem_select
from vinejax.rl.batch import PairBatch, RolloutBatch
from vinejax.rl.logprobs import token_logprobs, token_logprobs_and_entropy
from vinejax.rl.losses import (
                                   PolicyLossConfig,
                                   add_metrics,
                                   clipped_value_loss,
                                   dpo_positive_loss,
                                   dpo_positive_loss_from_sums,
                                   entropy_sum,
                                   kl_loss,
                                   kl_penalty,
                                   kl_reward_penalty,
                                   policy_loss,
                                   ppo_clip_loss,
                                   reduce_metrics,
                                   sequence_mean_nll,
                                   should_skip,
)
from vinejax.rl.values import MCValues, estimated_state_mask, mc_value_metrics, mc_values, state_mask

__all__ = [n for n in dir() if not n.startswith("_")]
