"""VinePPO's estimators: Monte Carlo values of every state (K continuations each, an adaptive
number, or the budget-global allocation), then step advantages A_i = V(s_{i+1}) − V(s_i) spread
over the tokens up to the next state."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vinejax.config import adaptive_config, allocation_config, max_value_step
from vinejax.rl import advantages
from vinejax.rl.values import state_mask
from vinejax.train.estimators.allocated import allocated_rollouts
from vinejax.train.estimators.base import Estimate, Estimator, Rollouts
from vinejax.train.values import EarlyMC, MCOptions, StepStates, adaptive_rollouts, mc_state_values


class StepValues(Estimator):
    """Values of step states from `state_values`, advantages by VinePPO's step rule
    (`rl.advantages.vine_step_advantages`; states past `vineppo.max_estimated_states` take V = R)."""

    needs_steps = True
    phase = "mc"

    def __init__(self, cfg):
        self.cap = max_value_step(cfg)

    def state_values(self, run, state, rollouts: Rollouts, states: StepStates, rng: jax.Array) -> tuple:
        """(f32[B, S] V̂ of the estimated states, metrics)."""
        raise NotImplementedError

    def estimate(self, run, state, rollouts: Rollouts, rng: jax.Array) -> Estimate:
        steps = rollouts.steps
        states = StepStates.of(steps.starts, steps.num_steps, self.cap)
        values, metrics = self.state_values(run, state, rollouts, states, rng)
        num_steps = jnp.asarray(steps.num_steps)
        step_adv = advantages.vine_step_advantages(values, jnp.asarray(rollouts.rewards), num_steps, self.cap)  # [B, S]
        exists = state_mask(num_steps, values.shape[1])
        metrics = metrics | {"advantages/step_mean": advantages.masked_mean(step_adv, exists),
                             "advantages/step_abs_mean": advantages.masked_mean(jnp.abs(step_adv), exists)}
        tokens = advantages.steps_to_tokens(step_adv, steps.starts, num_steps, jnp.asarray(rollouts.response_mask))
        return Estimate(np.asarray(tokens, np.float32), metrics, state_values=values)


class MonteCarlo(StepValues):
    """The paper's VinePPO: V̂(s) = the mean reward of `vineppo.num_rollouts` continuations of s
    (`vineppo.rollouts_by_step`: a count per step index; with `vineppo.pool_continuations`, and of
    earlier states' continuations through s: `rl.pooling`)."""

    name = "vineppo"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.k, self.early = cfg.vineppo.num_rollouts, cfg.vineppo.early_start
        self.options = MCOptions(bool(cfg.vineppo.pool_continuations), tuple(cfg.vineppo.rollouts_by_step))

    def start(self, run, state, env, host, rng):
        """Each group's continuations decode as soon as it is sampled (`train.values.EarlyMC`); with
        `vineppo.early_start` off, None: every group after the iteration's sampling (the same values)."""
        return EarlyMC(env, rng, self.k, host, self.cap, self.options) if self.early else None

    def state_values(self, run, state, rollouts, states, rng):
        if rollouts.early is not None:
            return rollouts.early.values(states)
        return mc_state_values(rollouts.env, rollouts.episodes, states, rng, self.k, rollouts.host, self.options)


class AdaptiveMonteCarlo(StepValues):
    """VinePPO with an adaptive number of continuations per state (`vineppo.adaptive`, exactly unbiased)."""

    name = "vineppo (adaptive K)"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.acfg, self.budget = adaptive_config(cfg), cfg.vineppo.adaptive.budget_per_state

    def state_values(self, run, state, rollouts, states, rng):
        res, metrics = adaptive_rollouts(rollouts.env, rollouts.episodes, states, rollouts.rewards, rng, self.acfg,
                                         self.budget)
        return res.values, metrics


class AllocatedMonteCarlo(StepValues):
    """VinePPO whose rollouts per state come from `vineppo.allocation` (exactly unbiased V̂)."""

    name = "vineppo (allocation)"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.acfg, self.k = allocation_config(cfg), cfg.vineppo.num_rollouts

    def state_values(self, run, state, rollouts, states, rng):
        res, metrics = allocated_rollouts(rollouts.env, rollouts.episodes, states, rollouts.rewards, rng, self.acfg,
                                          self.k)
        return res.values, metrics


def vineppo(cfg) -> StepValues:
    """`algo = "vineppo"`: fixed K, adaptive K (`vineppo.adaptive.enabled`) or the allocation
    (`vineppo.allocation.enabled`)."""
    if cfg.vineppo.allocation.enabled:
        return AllocatedMonteCarlo(cfg)
    return AdaptiveMonteCarlo(cfg) if cfg.vineppo.adaptive.enabled else MonteCarlo(cfg)
