"""Monte Carlo value estimates of VinePPO states.

A trajectory with L steps has states 0..L-1: state i is the prompt plus the first i steps
(state 0 is the prompt alone). The terminal state (all L steps) needs no estimate: its value is
the trajectory reward R. From every estimated state K continuations are sampled and graded;
the MC estimate is their mean reward

    V̂(s) = (1/n) Σ_k m_k r_k,            n = Σ_k m_k
    se(s) = std_unbiased(r over valid k) / sqrt(n)      (0 when n < 2)

Shapes: B trajectories, S step slots (padded), K continuation slots (padded).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class MCValues(NamedTuple):
    """MC value estimates per state. All arrays are ``[B, S]``."""

    value: jax.Array   # f32[B, S] mean reward of valid continuations; 0 where count == 0
    stderr: jax.Array  # f32[B, S] standard error of the mean; 0 where count < 2
    count: jax.Array   # int32[B, S] number of valid continuations


def state_mask(num_steps: jax.Array, num_slots: int) -> jax.Array:
    """bool[B, S]: state slot i exists, i.e. ``i < num_steps[b]`` (states 0..L-1)."""
    return jnp.arange(num_slots)[None, :] < num_steps[:, None]


def estimated_state_mask(num_steps: jax.Array, num_slots: int,
                         max_value_step: int | None = None) -> jax.Array:
    """bool[B, S]: states that need MC rollouts.

    States 0..L-1 exist; with a cap (paper's GSM8K ``max_step_for_value_estimation = 25``) only
    the prompt and the first ``max_value_step`` step prefixes are estimated, i.e. states
    ``i <= max_value_step``. Later states take V = R (see ``advantages.vine_step_advantages``).
    """
    mask = state_mask(num_steps, num_slots)
    if max_value_step is not None:
        mask = mask & (jnp.arange(num_slots)[None, :] <= max_value_step)
    return mask


def rollouts_by_step(num_rollouts: int, by_step: tuple, num_slots: int) -> np.ndarray:
    """int64[S] own continuations of the state at step index i: by_step[i] (its last entry for
    every later i), or num_rollouts everywhere when by_step is empty (`vineppo.rollouts_by_step`).
    A count that depends on where a state is, not on any draw, keeps every V̂ unbiased."""
    if not by_step:
        return np.full((num_slots,), num_rollouts, np.int64)
    return np.asarray(by_step, np.int64)[np.minimum(np.arange(num_slots), len(by_step) - 1)]


def mc_values(mc_rewards: jax.Array, mc_mask: jax.Array) -> MCValues:
    """Mean and standard error of continuation rewards per state.

    Args:
      mc_rewards: f32[B, S, K] reward of continuation k from state (b, i).
      mc_mask: bool[B, S, K] validity of each continuation (false for absent states,
        padded continuation slots, or failed samples).
    Returns:
      MCValues with ``value``, ``stderr`` (unbiased std / sqrt(n)) and ``count``, each [B, S].
    """
    m = mc_mask.astype(jnp.float32)                                       # [B, S, K]
    r = jnp.where(mc_mask, mc_rewards, 0.0).astype(jnp.float32)           # [B, S, K]
    n = m.sum(-1)                                                         # [B, S]
    mean = r.sum(-1) / jnp.maximum(n, 1.0)                                # [B, S]
    sq_dev = jnp.where(mc_mask, (r - mean[..., None]) ** 2, 0.0).sum(-1)  # [B, S]
    var = sq_dev / jnp.maximum(n - 1.0, 1.0)
    stderr = jnp.where(n >= 2, jnp.sqrt(var / jnp.maximum(n, 1.0)), 0.0)
    return MCValues(value=mean, stderr=stderr, count=n.astype(jnp.int32))


def mc_value_metrics(est: MCValues, states: jax.Array) -> dict[str, jax.Array]:
    """Logging summaries over the states selected by ``states: bool[B, S]``.

    Returns scalars: ``mc/num_states``, ``mc/rollouts`` (total valid continuations),
    ``mc/value_mean``, ``mc/value_std`` (std of V̂ across states), ``mc/stderr_mean``.
    """
    w = states.astype(jnp.float32)
    n = jnp.maximum(w.sum(), 1.0)
    mean = (w * est.value).sum() / n
    std = jnp.sqrt((w * (est.value - mean) ** 2).sum() / n)
    return {
        "mc/num_states": w.sum(),
        "mc/rollouts": jnp.where(states, est.count, 0).sum().astype(jnp.float32),
        "mc/value_mean": mean,
        "mc/value_std": std,
        "mc/stderr_mean": (w * est.stderr).sum() / n,
    }
