"""Advantage numerics: VinePPO step advantages, GAE, GRPO, RLOO, masked whitening.

Each estimator of ``vinejax.train.estimators`` turns its values (MC state values, critic token
values, or none for the group baselines) into token advantages with these functions;
``whiten_batch`` normalises them per optimizer batch.

Array conventions (shared with sampling and training):
  tokens / masks are ``[B, T]``; a row is prompt then response, right-padded;
  ``response_mask: bool[B, T]`` marks response tokens (incl. EOS when finished).
  ``step_starts: int32[B, S]`` absolute column where step i begins (step 0 at the prompt
  length); ``num_steps: int32[B]`` = L; slots ``i >= L`` are padding. State i = prefix before
  ``step_starts[b, i]``; state 0 = prompt. ``rewards: f32[B]``.
All functions are pure, loop-free over tokens, and jittable (integer options are static).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from vinejax.rl.batch import RolloutBatch
from vinejax.rl.values import state_mask


# ----------------------------------------------------------------------------- masked stats
def masked_sum(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Σ mask·x over all elements (mask may be bool)."""
    return jnp.where(mask, x, 0.0).sum()


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Σ mask·x / max(Σ mask, 1)."""
    return masked_sum(x, mask) / jnp.maximum(mask.sum(), 1)


def masked_var(x: jax.Array, mask: jax.Array, unbiased: bool = True) -> jax.Array:
    """Masked variance Σ mask (x − μ)² / (n − 1) (or / n when ``unbiased=False``); 0 if n < 2."""
    n = mask.sum().astype(jnp.float32)
    mu = masked_mean(x, mask)
    ss = masked_sum((x - mu) ** 2, mask)
    denom = jnp.maximum(n - 1.0, 1.0) if unbiased else jnp.maximum(n, 1.0)
    return jnp.where(n >= 2, ss / denom, 0.0)


def masked_whiten(x: jax.Array, mask: jax.Array, shift_mean: bool = True,
                  eps: float = 1e-8) -> jax.Array:
    """Whiten over valid entries: ``(x − μ) / sqrt(σ² + eps)``, σ² the unbiased masked variance.

    With ``shift_mean=False`` the mean is added back: ``(x − μ)/sqrt(σ² + eps) + μ`` (only the
    scale is normalised; TRL convention). Masked entries are returned as 0. Any shape.
    """
    mu = masked_mean(x, mask)
    out = (x - mu) * jax.lax.rsqrt(masked_var(x, mask, unbiased=True) + eps)
    if not shift_mean:
        out = out + mu
    return jnp.where(mask, out, 0.0)


# ----------------------------------------------------------------------------- VinePPO
def vine_step_advantages(values: jax.Array, rewards: jax.Array, num_steps: jax.Array,
                         max_value_step: int | None = None) -> jax.Array:
    """VinePPO per-step advantages ``A_i = r_i + V(s_{i+1}) − V(s_i)``, γ = 1.

    r_i = 0 except the last step, which gets R with V(terminal) = 0; equivalently
    ``V(s_L) := R`` and ``A_i = V(s_{i+1}) − V(s_i)`` for i = 0..L−1, so Σ_i A_i = R − V(s_0).
    With ``max_value_step = c`` only states i ≤ c are estimated (prompt + first c step prefixes;
    paper GSM8K c = 25); states i > c take V = R, so steps i > c get advantage 0.

    Args:
      values: f32[B, S] MC estimates V̂(s_i) (slots ≥ L ignored).
      rewards: f32[B] trajectory reward R.
      num_steps: int32[B] number of steps L (0 for an empty response).
    Returns:
      f32[B, S] step advantages, 0 on slots i ≥ L.
    """
    B, S = values.shape
    R = rewards.astype(jnp.float32)[:, None]                                 # [B, 1]
    j = jnp.arange(S + 1)[None, :]                                           # [1, S+1]
    v = jnp.concatenate([values.astype(jnp.float32), jnp.zeros((B, 1))], 1)  # [B, S+1]
    take_r = j >= num_steps[:, None]                                         # terminal (and beyond)
    if max_value_step is not None:
        take_r = take_r | (j > max_value_step)
    v = jnp.where(take_r, R, v)                                              # V(s_j), j = 0..S
    adv = v[:, 1:] - v[:, :-1]                                               # [B, S]
    return jnp.where(state_mask(num_steps, S), adv, 0.0)


def steps_to_tokens(step_values: jax.Array, step_starts: jax.Array, num_steps: jax.Array,
                    response_mask: jax.Array) -> jax.Array:
    """Spread per-step values to tokens: token t takes the value of the step containing it.

    The step of column t is the last valid i with ``step_starts[b, i] <= t`` (valid starts are
    increasing). Tokens outside ``response_mask`` (prompt, padding) and any response token before
    step 0 get 0.

    Args: step_values f32[B, S], step_starts int32[B, S], num_steps int32[B],
      response_mask bool[B, T].
    Returns: f32[B, T].
    """
    B, S = step_values.shape
    T = response_mask.shape[1]
    big = jnp.iinfo(jnp.int32).max
    starts = jnp.where(state_mask(num_steps, S), step_starts, big).astype(jnp.int32)   # [B, S]
    cols = jnp.arange(T, dtype=jnp.int32)                                                # [T]
    idx = jax.vmap(lambda s: jnp.searchsorted(s, cols, side="right"))(starts) - 1       # [B, T]
    vals = jnp.take_along_axis(step_values, jnp.clip(idx, 0, S - 1), axis=1)            # [B, T]
    return jnp.where(response_mask & (idx >= 0), vals, 0.0)


# ----------------------------------------------------------------------------- GAE (PPO)
def last_token_rewards(rewards: jax.Array, response_mask: jax.Array) -> jax.Array:
    """f32[B, T] with R[b] on the last response token of row b, 0 elsewhere (all 0 if empty)."""
    T = response_mask.shape[1]
    last = T - 1 - jnp.argmax(response_mask[:, ::-1], axis=1)                 # [B]
    onehot = jnp.arange(T)[None, :] == last[:, None]                           # [B, T]
    return jnp.where(onehot & response_mask.any(1, keepdims=True), rewards[:, None], 0.0)


def gae_advantages(values: jax.Array, token_rewards: jax.Array, response_mask: jax.Array,
                   gamma: float = 1.0, lam: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation over response tokens (reverse ``lax.scan``).

    ``values[b, t]`` is the critic's V of the state *before* response token t is generated
    (aligned like log-probs). Over the valid tokens t_1 < ... < t_n of a row:
        δ_k = r_{t_k} + γ V_{t_{k+1}} − V_{t_k}     (V_{t_{n+1}} = 0)
        A_k = δ_k + γλ A_{k+1},   returns_k = A_k + V_{t_k}.
    Masked tokens are skipped (carry passes through) and get 0.
    Paper PPO: γ = λ = 1, reward R on the last response token (``last_token_rewards``).

    Args: values f32[B, T], token_rewards f32[B, T], response_mask bool[B, T].
    Returns: (advantages f32[B, T], returns f32[B, T]).
    """
    v = jnp.where(response_mask, values, 0.0).astype(jnp.float32).T           # [T, B]
    r = jnp.where(response_mask, token_rewards, 0.0).astype(jnp.float32).T    # [T, B]
    m = response_mask.T                                                        # [T, B]

    def step(carry, x):
        next_v, next_a = carry                                                 # [B], [B]
        v_t, r_t, m_t = x
        a_t = r_t + gamma * next_v - v_t + gamma * lam * next_a
        new = (jnp.where(m_t, v_t, next_v), jnp.where(m_t, a_t, next_a))
        return new, jnp.where(m_t, a_t, 0.0)

    B = values.shape[0]
    init = (jnp.zeros((B,), jnp.float32), jnp.zeros((B,), jnp.float32))
    _, adv = jax.lax.scan(step, init, (v, r, m), reverse=True)                 # [T, B]
    adv = adv.T
    return adv, jnp.where(response_mask, adv + v.T, 0.0)


# ----------------------------------------------------------------------------- GRPO / RLOO
def _group_ids(batch: int, group_ids: jax.Array | None, group_size: int | None) -> jax.Array:
    if (group_ids is None) == (group_size is None):
        raise ValueError("give exactly one of group_ids or group_size")
    if group_ids is None:
        if batch % group_size:
            raise ValueError(f"batch {batch} not divisible by group_size {group_size}")
        return jnp.arange(batch) // group_size
    return group_ids.astype(jnp.int32)


def _group_sum(x: jax.Array, ids: jax.Array, valid: jax.Array) -> jax.Array:
    """f32[B]: for each row, Σ x over the valid rows of its group (ids in [0, B))."""
    y = jnp.where(valid, x, 0.0)
    return jax.ops.segment_sum(y, ids, num_segments=x.shape[0])[ids]


def grpo_advantages(rewards: jax.Array, group_ids: jax.Array | None = None,
                    group_size: int | None = None, valid: jax.Array | None = None,
                    scale_by_std: bool = True, unbiased_std: bool = True,
                    eps: float = 1e-6) -> jax.Array:
    """GRPO sequence advantages ``A = (R − mean_g) / (std_g + eps)`` within each group g.

    Groups are either ``group_size`` consecutive rows (``[num_groups, group_size]`` reshape) or
    ``group_ids: int32[B]`` with ids in [0, B). ``valid: bool[B]`` excludes padding rows from the
    statistics (they get 0). std is unbiased by default (0 for singleton groups).
    Returns f32[B].
    """
    r = rewards.astype(jnp.float32)
    valid = jnp.ones(r.shape, bool) if valid is None else valid
    ids = _group_ids(r.shape[0], group_ids, group_size)
    n = _group_sum(jnp.ones_like(r), ids, valid)                              # [B]
    mean = _group_sum(r, ids, valid) / jnp.maximum(n, 1.0)                    # [B]
    sq = _group_sum((r - mean) ** 2, ids, valid)                              # [B]
    var = sq / (jnp.maximum(n - 1.0, 1.0) if unbiased_std else jnp.maximum(n, 1.0))
    adv = r - mean
    if scale_by_std:
        adv = adv / (jnp.sqrt(var) + eps)
    return jnp.where(valid, adv, 0.0)


def rloo_advantages(rewards: jax.Array, group_ids: jax.Array | None = None,
                    group_size: int | None = None, valid: jax.Array | None = None) -> jax.Array:
    """RLOO leave-one-out advantages ``A_i = R_i − (Σ_{j∈g, j≠i} R_j) / (n_g − 1)``.

    Same grouping arguments as ``grpo_advantages``; 0 for singleton groups and invalid rows.
    Returns f32[B].
    """
    r = rewards.astype(jnp.float32)
    valid = jnp.ones(r.shape, bool) if valid is None else valid
    ids = _group_ids(r.shape[0], group_ids, group_size)
    n = _group_sum(jnp.ones_like(r), ids, valid)                              # [B]
    s = _group_sum(r, ids, valid)                                             # [B]
    adv = r - (s - r) / jnp.maximum(n - 1.0, 1.0)
    return jnp.where(valid & (n >= 2), adv, 0.0)


def sequence_to_tokens(seq_values: jax.Array, response_mask: jax.Array) -> jax.Array:
    """Broadcast f32[B] to the response tokens: f32[B, T], 0 outside ``response_mask``."""
    return jnp.where(response_mask, seq_values[:, None], 0.0)


def ppo_gae_targets(values: jax.Array, rewards: jax.Array, response_mask: jax.Array,
                    gamma: float = 1.0, lam: float = 1.0,
                    kl_penalties: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """PPO: token rewards (R on the last response token, minus optional per-token
    ``kl_penalties`` from ``losses.kl_reward_penalty``) -> GAE advantages and critic returns.

    Args: values f32[B, T] critic values aligned like log-probs, rewards f32[B],
      response_mask bool[B, T], kl_penalties f32[B, T] or None. Paper: γ = λ = 1, no KL penalty.
    Returns: (advantages f32[B, T], returns f32[B, T]), unwhitened.
    """
    token_rewards = last_token_rewards(rewards, response_mask)
    if kl_penalties is not None:
        token_rewards = token_rewards - kl_penalties
    return gae_advantages(values, token_rewards, response_mask, gamma, lam)


def whiten_batch(batch: RolloutBatch, shift_mean: bool = True) -> RolloutBatch:
    """Batch with token advantages whitened over its response tokens (masked mean, unbiased std)."""
    return batch.replace(advantages=masked_whiten(batch.advantages, batch.response_mask, shift_mean=shift_mean))
