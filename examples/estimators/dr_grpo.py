"""Dr. GRPO's advantage as a vinejax estimator (Liu et al. 2025, "Understanding R1-Zero-Like
Training: A Critical Perspective"): the group baseline of GRPO without the division by the
group's standard deviation, A_i = R_i − mean_j R_j over the samples of one problem, put on every
response token. Dr. GRPO pairs it with a loss normalised by a constant instead of each
response's length: set `ppo.loss_aggregation="seq-mean-token-sum-norm"`.

    python experiments/run.py --config configs/arith_vineppo.py --config.algo=dr_grpo:DrGRPO \
        --config.import_dir=examples/estimators --config.ppo.loss_aggregation=seq-mean-token-sum-norm

Nothing in the package changes: the run's loop, checkpoints, metrics and evaluation are the
built-in estimators'. An estimator is a class whose instances answer `estimate(run, state,
rollouts, rng)` with an `Estimate` (vinejax.train.estimators.base documents both).
"""
import jax.numpy as jnp
import numpy as np

from vinejax.rl import advantages
from vinejax.train.estimators import Estimate, Estimator


class DrGRPO(Estimator):
    """R − the group's mean reward (no std scaling, no whitening over the batch)."""

    name = "dr_grpo"
    whiten = False  # the literature's convention, used while ppo.whiten_advantages is None

    def __init__(self, cfg):
        if cfg.sampling.samples_per_problem < 2:
            raise ValueError("Dr. GRPO needs sampling.samples_per_problem >= 2 (a group to compare with)")

    def estimate(self, run, state, rollouts, rng):
        rewards = jnp.asarray(rollouts.rewards)  # f32[B], the samples of a problem consecutive
        seq = advantages.grpo_advantages(rewards, group_size=rollouts.group_size, scale_by_std=False)  # [B]
        tokens = advantages.sequence_to_tokens(seq, jnp.asarray(rollouts.response_mask))  # [B, T]
        groups = np.asarray(rollouts.rewards).reshape(-1, rollouts.group_size)
        solved_by_some = float(((groups > 0).any(1) & (groups == 0).any(1)).mean())  # groups with a signal
        return Estimate(np.asarray(tokens, np.float32), {"dr_grpo/mixed_groups": solved_by_some})
