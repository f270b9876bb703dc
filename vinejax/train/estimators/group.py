"""Group baselines: the samples of one problem are each other's baseline (no values to learn)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vinejax.rl import advantages
from vinejax.train.estimators.base import Estimate, Estimator, Rollouts


class GroupBaseline(Estimator):
    """Sequence advantages from the group's rewards (`sequence_advantages`), on every response token.
    Not whitened again over the batch by default (verl, TRL)."""

    whiten = False

    def __init__(self, cfg):
        del cfg

    def sequence_advantages(self, rewards: jax.Array, group_size: int) -> jax.Array:
        """f32[B] from rewards f32[B] in groups of `group_size` consecutive rows."""
        raise NotImplementedError

    def estimate(self, run, state, rollouts: Rollouts, rng: jax.Array) -> Estimate:
        del run, state, rng
        seq = self.sequence_advantages(jnp.asarray(rollouts.rewards), rollouts.group_size)  # [B]
        tokens = advantages.sequence_to_tokens(seq, jnp.asarray(rollouts.response_mask))
        return Estimate(np.asarray(tokens, np.float32), {})


class GRPO(GroupBaseline):
    """(R − mean_g) / (std_g + ε), the unbiased std of the group (DeepSeekMath's GRPO; verl's default)."""

    name = "grpo"

    def sequence_advantages(self, rewards, group_size):
        return advantages.grpo_advantages(rewards, group_size=group_size)


class RLOO(GroupBaseline):
    """R_i − the mean of the other rewards of the group (leave-one-out; verl, TRL)."""

    name = "rloo"

    def sequence_advantages(self, rewards, group_size):
        return advantages.rloo_advantages(rewards, group_size=group_size)
