"""PPO's estimator: a learned critic's token values and GAE (γ, λ = `ppo.gae_gamma`, `ppo.gae_lambda`)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vinejax.rl import advantages
from vinejax.rl.losses import kl_reward_penalty
from vinejax.train.estimators.base import Estimate, Estimator, Rollouts
from vinejax.train.values import critic_token_values


class CriticGAE(Estimator):
    """The paper's PPO baseline: the critic (the policy's shape + a value head, initialised from the
    SFT policy) scores every prefix; the reward R sits on the last response token (minus β·k1 per
    token with `ppo.kl_in_reward`); GAE gives the advantages and the critic's targets."""

    name = "ppo"
    uses_critic = True
    kl_in_reward = True

    def __init__(self, cfg):
        self.gamma, self.lam, self.penalty = cfg.ppo.gae_gamma, cfg.ppo.gae_lambda, cfg.ppo.kl_in_reward

    def estimate(self, run, state, rollouts: Rollouts, rng: jax.Array) -> Estimate:
        del rng
        token_values = critic_token_values(run.mesh, state.critic, run.critic_cfg, rollouts.tokens,
                                           run.cfg.sampling.batch_size)  # [B, T]
        mask = jnp.asarray(rollouts.response_mask)
        penalties = None
        if self.penalty:  # −β·kl_t in the token rewards (the official KL-in-reward option)
            penalties = kl_reward_penalty(jnp.asarray(rollouts.old_logprobs), jnp.asarray(rollouts.ref_logprobs),
                                          mask, state.kl_coef)
        adv, returns = advantages.ppo_gae_targets(token_values, jnp.asarray(rollouts.rewards), mask, self.gamma,
                                                  self.lam, penalties)
        metrics = {"critic/values_mean": advantages.masked_mean(token_values, mask)}
        return Estimate(np.asarray(adv, np.float32), metrics, returns=np.asarray(returns), old_values=token_values)
