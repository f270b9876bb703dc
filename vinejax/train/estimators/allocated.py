"""VinePPO with the budget-global allocation of MC rollouts (`vineppo.allocation`, `rl.allocation`).

Per episode group (`train.values.episode_groups`: `sampling.batch_size` episodes, the unit whose
trajectory KV cache is on the devices; the whole iteration when it fits one group), two decode
rounds from the one trajectory cache:
  round 1  `allocation.pilot_counts` rollouts of every distinct estimated state (key fold_in(key, 0));
  round 2  the rest of the group's budget, rollouts_per_state × its distinct states, where
           `allocation.allocate` says (key fold_in(key, 1));
then V̂ = `allocation.values` (exactly unbiased; `rl/allocation.py` proves it). The budget is the
group's, not the iteration's, so a group stays one pass of its trajectory cache and needs no
later group (a whole-iteration budget would rebuild every group's cache for round 2, and round 2
would wait for the last group's sampling). Measured (`benchmarks/adaptive_k.py --groups`,
docs/results.md §4): groups of 256 episodes reach the whole-iteration allocation's value error
within 0.5%, groups of 64 within 1.5-4.5%.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from vinejax import sampling
from vinejax.errors import ConfigError
from vinejax.rl import allocation
from vinejax.sampling import RolloutEnv
from vinejax.train.episodes import Episodes, scored
from vinejax.train.values import StepStates, episode_groups, grade_continuations


class AllocatedRollouts(NamedTuple):
    """Outcome over the U distinct states of an iteration's episodes (groups numbered on)."""

    values: np.ndarray     # f32[B, S] unbiased V̂ of every estimated state (0 elsewhere)
    uid: np.ndarray        # int64[B, S] distinct-state id (-1: not estimated)
    n: np.ndarray          # int64[U] rollouts drawn (round 1 + round 2)
    s: np.ndarray          # int64[U] successes
    pilot: np.ndarray      # int64[U] round-1 rollouts
    stop_rule: np.ndarray  # bool[U] under "stop when the pilot is unanimous"


STATS = ("rows", "slot_steps", "live_steps", "grade_errors", "calls")  # summed over rounds and groups


def check_binary(rewards: np.ndarray, task) -> None:
    """Raise a one-line ConfigError unless every reward is 0 or 1 (the allocation's Bernoulli model)."""
    bad = rewards[(rewards != 0) & (rewards != 1)]
    if len(bad):
        raise ConfigError(f"config key 'vineppo.allocation.enabled': the allocation needs 0/1 rewards; task "
                          f"{getattr(task, 'name', task)!r} gave {bad[0]}")


def draw_round(traj: sampling.Trajectories, ep: Episodes, starts: np.ndarray, rep: np.ndarray, counts: np.ndarray,
               rng: jax.Array) -> tuple[np.ndarray, dict]:
    """(int64[U] successes, `STATS`) of counts[u] continuations of each distinct state u (at
    episode rep[u, 0], slot rep[u, 1]) from the trajectories of `ep`, graded like episodes."""
    successes, stats = np.zeros(len(rep), np.int64), dict.fromkeys(STATS, 0)
    live = np.nonzero(counts > 0)[0]
    if len(live) == 0:
        return successes, stats
    per_slot = np.zeros(starts.shape, np.int64)  # [B, S]
    per_slot[rep[live, 0], rep[live, 1]] = counts[live]
    out = traj.continue_from(starts, rng, per_slot, state_mask=per_slot > 0, budgets=traj.env.budgets(starts))
    rewards, errors = scored(grade_continuations(traj.env, ep, starts, out, rep[live, 0], rep[live, 1], counts[live]))
    check_binary(rewards, traj.env.task)
    successes[live] = rewards.sum(1).round().astype(np.int64)
    return successes, {key: out.stats.get(key, 0) for key in STATS} | {"grade_errors": errors, "calls": 1}


def allocated_group(env: RolloutEnv, ep: Episodes, states: StepStates, rewards: np.ndarray, rng: jax.Array,
                    acfg: allocation.AllocationConfig) -> tuple[AllocatedRollouts, dict]:
    """The two rounds for one group of episodes (all of `ep`, rewards f32[B] their grades): its
    distinct states, budget and trajectory cache its own. Returns the outcome and its `STATS`."""
    check_binary(rewards, env.task)
    uid, rep = sampling.unique_prefixes(ep.tokens, states.starts, states.estimated)
    tokens = allocation.step_token_counts(states.starts, states.num_steps, ep.total_lens)  # [B, S]
    group = allocation.iteration_states(uid, rewards, tokens, num_states=len(rep))
    traj = sampling.Trajectories(env, ep.tokens, ep.total_lens)  # one cache pass for both rounds
    pilot = allocation.pilot_counts(group, acfg)
    pilot_s, stats1 = draw_round(traj, ep, states.starts, rep, pilot, jax.random.fold_in(rng, 0))
    alloc = allocation.allocate(group, pilot, pilot_s, acfg)
    more_s, stats2 = draw_round(traj, ep, states.starts, rep, alloc.n - pilot, jax.random.fold_in(rng, 1))
    s = pilot_s + more_s
    v_u = allocation.values(group, alloc, s)
    values = np.where(uid >= 0, v_u[np.maximum(uid, 0)] if len(rep) else 0.0, 0.0).astype(np.float32)
    stats = {key: stats1[key] + stats2[key] for key in STATS}
    return AllocatedRollouts(values, uid, alloc.n, s, alloc.pilot, alloc.stop_rule), stats


def allocated_rollouts(env: RolloutEnv, ep: Episodes, states: StepStates, rewards: np.ndarray, rng: jax.Array,
                       acfg: allocation.AllocationConfig, fixed_k: int = 9) -> tuple[AllocatedRollouts, dict]:
    """V̂ of every estimated state by the allocation, group by group (`allocated_group`; group g
    draws with the key of `episode_groups`), and its `mc/*`, `allocation/*` metrics
    (allocation/ratio_to_fixed_k: rollouts ÷ the fixed_k × distinct states that fixed K draws)."""
    b, _ = states.starts.shape
    uid = np.full(states.starts.shape, -1, np.int64)
    parts, offset, stats = [], 0, dict.fromkeys(STATS, 0)
    for part, key in episode_groups(b, env.group_rows, rng):
        res, group_stats = allocated_group(env, ep.select(part), states.select(part), rewards[part], key, acfg)
        uid[part] = np.where(res.uid >= 0, res.uid + offset, -1)  # the group's distinct states, numbered on
        offset += len(res.n)
        parts.append(res)
        stats = {key: stats[key] + group_stats[key] for key in stats}
    n, s, pilot, rule = (np.concatenate([getattr(p, f) for p in parts]) for f in ("n", "s", "pilot", "stop_rule"))
    values = np.concatenate([p.values for p in parts])
    u, est = len(n), states.estimated
    per_state = lambda x: float(x.mean()) if u else 0.0  # noqa: E731
    metrics = {
        "mc/unique_states": float(u),
        "mc/num_states": float(est.sum()),
        "mc/rows": float(n.sum()),
        "mc/rollouts": float(n[uid[est]].sum()),  # as fixed K's: over estimated state slots
        "mc/live_fraction": stats["live_steps"] / max(stats["slot_steps"], 1),
        "mc/grade_errors": float(stats["grade_errors"]),
        "mc/value_mean": float(values[est].mean()) if est.any() else 0.0,
        "allocation/rollouts_per_state": per_state(n),
        "allocation/ratio_to_fixed_k": float(n.sum()) / max(fixed_k * u, 1),
        "allocation/pilot_share": float(pilot.sum()) / max(float(n.sum()), 1.0),
        "allocation/stop_rule_frac": per_state(rule),
        "allocation/settled_frac": per_state(rule & (n == pilot)),  # stopped at a unanimous pilot
        "allocation/at_max_frac": per_state(n >= acfg.max_rollouts),
        "allocation/calls": float(stats["calls"]),
    }
    return AllocatedRollouts(values, uid, n, s, pilot, rule), metrics
