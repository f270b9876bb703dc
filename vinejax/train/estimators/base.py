"""The estimator contract: what an estimator gets from an iteration's episodes (`Rollouts`), what
it gives back (`Estimate`), and the `Estimator` interface every built-in and user estimator has."""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import numpy as np

from vinejax.errors import ConfigError
from vinejax.sampling import RolloutEnv
from vinejax.train.episodes import Episodes
from vinejax.train.host_work import HostWork
from vinejax.train.values import StepStates


@dataclasses.dataclass(frozen=True)
class Rollouts:
    """One iteration's episodes as an estimator sees them (B = problems × samples rows, the
    samples of one problem consecutive; T token columns)."""

    env: RolloutEnv  # the policy that sampled them (MC continues from it), tokenizer, task
    episodes: Episodes
    rewards: np.ndarray  # f32[B] the task's grade, 0 for length-stopped responses
    tokens: np.ndarray  # int32[B, T] prompt + response, right-padded
    response_mask: np.ndarray  # bool[B, T] trained tokens (episodes the step splitter rejects: none)
    old_logprobs: np.ndarray  # f32[B, T] under the sampling policy (logits / temperature)
    ref_logprobs: np.ndarray  # f32[B, T] under the frozen reference
    group_size: int  # samples per problem: rows g·n .. g·n + n − 1 answer one problem
    steps: Optional[StepStates]  # every step state (no cap) when the estimator `needs_steps`, else None
    host: HostWork  # grading on the host thread (pass `host` to `train.values.mc_rewards`)


class Estimate(NamedTuple):
    """An estimator's answer. advantages f32[B, T]: token advantages, unwhitened, 0 off the
    response mask (whitening follows `ppo.whiten_advantages`, default `Estimator.whiten`);
    metrics: scalars logged as they are; returns / old_values f32[B, T]: the critic's targets and
    its values at sampling time (estimators with a critic), else None; state_values f32[B, S]:
    V̂ of each step state, shown in samples.jsonl (step estimators), else None."""

    advantages: np.ndarray
    metrics: dict
    returns: Optional[np.ndarray] = None
    old_values: Optional[np.ndarray] = None
    state_values: Optional[np.ndarray] = None


class Estimator:
    """One way of getting advantages for the PPO-clip update.

    Class attributes say what it needs and how it is trained:
      name: what the logs call it;
      needs_steps: responses are split into steps (the task's `split_steps`, on the host thread
        behind the log-prob pass); episodes the splitter rejects are dropped (no loss);
      uses_critic: a critic (the policy's shape + a value head, initialised from the policy) is
        kept in the train state, checkpointed, and trained on `Estimate.returns` with the clipped
        value loss after every policy step;
      whiten: the literature's whitening of the advantages over the optimizer batch, used when
        `ppo.whiten_advantages` is None;
      kl_in_reward: accepts `ppo.kl_in_reward` (the KL penalty in the token rewards);
      phase: the timer name of `estimate` (`time/<phase>`).
    `estimate(run, state, rollouts, rng)` returns the `Estimate`: `run` is the `RunContext`,
    `state` the `TrainState` (its params sampled the episodes; its critic, with `uses_critic`),
    `rng` a key for the estimator's own sampling. `validate(cfg)` raises `ConfigError` for a
    setting it cannot run with.
    """

    name: str = "estimator"
    needs_steps: bool = False
    uses_critic: bool = False
    whiten: bool = True
    kl_in_reward: bool = False
    phase: str = "values"

    def validate(self, cfg) -> None:
        if cfg.ppo.kl_in_reward and not self.kl_in_reward:
            raise ConfigError(f"config key 'ppo.kl_in_reward': the KL penalty in the reward needs token-level "
                              f"advantages (ppo); estimator {self.name!r} does not take it")

    def estimate(self, run: Any, state: Any, rollouts: Rollouts, rng: jax.Array) -> Estimate:
        raise NotImplementedError
