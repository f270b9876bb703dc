"""The values phase of an iteration: VinePPO's Monte Carlo state values (K continuations from
every step boundary, graded like episodes) and PPO's critic token values."""
from __future__ import annotations

import contextlib
from typing import NamedTuple, Optional

import jax
import numpy as np

from vinejax import sampling
from vinejax.multihost import split_rows
from vinejax.rl import adaptive
from vinejax.rl import values as values_lib
from vinejax.sampling import RolloutEnv
from vinejax.train import host_work
from vinejax.train.episodes import Episodes, finish_response, scored
from vinejax.train.host_work import HostWork
from vinejax.train.scoring import score_rows, value_scorer


class StepStates(NamedTuple):
    """The states of a batch of B episodes: state i of episode b is `tokens[b, :starts[b, i]]`."""

    starts: np.ndarray  # int32[B, S] absolute column where step i starts; slots >= num_steps are padding
    num_steps: np.ndarray  # int32[B] (0: an episode the splitter dropped)
    estimated: np.ndarray  # bool[B, S] the states that get MC rollouts

    @classmethod
    def of(cls, starts: np.ndarray, num_steps: np.ndarray, max_value_step: Optional[int] = None) -> "StepStates":
        """States 0..L−1 of each episode, those i <= max_value_step estimated when it is given
        (`rl.values.estimated_state_mask`; later states take V = R)."""
        starts, num_steps = np.asarray(starts), np.asarray(num_steps)
        mask = values_lib.estimated_state_mask(num_steps, starts.shape[1], max_value_step)
        return cls(starts, num_steps, np.asarray(mask, bool))

    def select(self, rows) -> "StepStates":
        """The states of episodes `rows` (int[M])."""
        return StepStates(*(x[rows] for x in self))


def grade_continuations(env: RolloutEnv, ep: Episodes, step_starts: np.ndarray, out: sampling.ContinuationOutput,
                        rows: np.ndarray, cols: np.ndarray, counts: np.ndarray, pool=None):
    """f32[N, K] rewards of the continuations of states (rows[i], cols[i]): the grade of prefix +
    continuation (cut at a stop string in the continuation; NaN where it raised or timed out:
    `episodes.scored`), 0 for a length-stopped one and for slots k >= counts[i] (N = len(rows),
    K = out's sample axis). With `pool`, the texts are built and graded on its thread: returns
    the function that waits for the rewards."""
    tokenizer, task, stops, workers = env.tokenizer, env.task, env.stops, env.grade_workers
    k_all = out.lengths.shape[2]
    counts = np.asarray(counts, np.int64)
    i = np.repeat(np.arange(len(rows)), counts)  # [M] the state of each drawn continuation
    j = np.arange(len(i)) - np.repeat(np.cumsum(counts) - counts, counts)  # [M] its sample slot
    r, c = np.asarray(rows)[i], np.asarray(cols)[i]

    def grade(lo: int, hi: int) -> np.ndarray:  # f32[hi - lo]: draws lo..hi, texts built here
        if hi == lo:
            return np.zeros((0,), np.float32)
        texts, prefixes = [], {}  # prefixes: the state's response tokens, once per state
        for m in range(lo, hi):
            if i[m] not in prefixes:
                prefixes[i[m]] = ep.tokens[r[m], ep.prompt_lens[r[m]] : step_starts[r[m], c[m]]].tolist()
            prefix = prefixes[i[m]]
            ids = prefix + out.tokens[r[m], c[m], j[m], : out.lengths[r[m], c[m], j[m]]].tolist()
            texts.append(finish_response(tokenizer, stops, ids, search_from=len(prefix))[0])
        return task.grade_batch(texts, [ep.problems[x] for x in r[lo:hi]], num_workers=workers)

    def place(graded: np.ndarray) -> np.ndarray:  # NaN stays: a grade that raised (counted by the caller)
        rewards = np.zeros((len(rows), k_all), np.float32)
        finished = out.finish_reason[r, c, j] != sampling.FINISH_LENGTH
        rewards[i, j] = np.where(finished, graded, 0.0)
        return rewards

    graded = split_rows(grade, len(i), pool)  # each process builds and grades a share
    return place(graded) if pool is None else (lambda: place(graded()))


def episode_groups(b: int, trajectory_rows: int, rng: jax.Array):
    """(int[rows] episode indices, key) of each group of `trajectory_rows` episodes (all B when
    <= 0); group g's key is fold_in(rng, g), or rng itself when there is one group."""
    group = b if trajectory_rows <= 0 else trajectory_rows
    for g, lo in enumerate(range(0, b, group)):
        yield np.arange(lo, min(lo + group, b)), rng if group >= b else jax.random.fold_in(rng, g)


def mc_rewards(env: RolloutEnv, ep: Episodes, states: StepStates, rng: jax.Array, k: int,
               host: Optional[HostWork] = None):
    """Rewards of K continuations from every estimated state: f32[B, S, K] and its mask, plus stats.

    Each continuation may write `env.budgets` of its prefix tokens (the official budget:
    min(max_new_tokens, context − prefix)), not what is left of its episode's own budget. With
    `env.batch_rows` > 0 the episodes go through in groups of that many rows (group g draws
    with fold_in(rng, g)): only one group's trajectory KV cache is on the devices at a time (a
    512-episode iteration of DeepSeekMath-7B would need ~770 GB for all of them); keep it a
    multiple of the samples per problem so a problem's shared prompt state is continued once.
    With `host`, a group's continuations are graded on its worker thread while the devices
    decode the next group's (at most two groups' continuations are held at a time); without,
    each is graded in turn.
    """
    b, s = states.starts.shape
    rewards = np.zeros((b, s, k), np.float32)
    totals = dict.fromkeys(("unique_states", "rows", "chunks", "slot_steps", "live_steps"), 0)
    slots, pending, errors = 0, [], [0]  # pending: (episodes, states' rows, cols, rewards' waiter) being graded

    def collect(part, rows, cols, waiter):
        rewards[part[rows], cols], bad = scored(host.wait(waiter))
        errors[0] += bad

    with contextlib.nullcontext(host) if host is not None else host_work.session(overlap=False) as host:
        for part, key in episode_groups(b, env.batch_rows, rng):
            group = states.select(part)
            out = sampling.continue_from_prefixes(env, ep.tokens[part], ep.total_lens[part], group.starts, key, k,
                                                  state_mask=group.estimated, budgets=env.budgets(group.starts))
            rows, cols = np.nonzero(group.estimated)
            graded = grade_continuations(env, ep.select(part), group.starts, out, rows, cols, np.full(len(rows), k),
                                         pool=host.pool)
            pending.append((part, rows, cols, host.track(graded)))
            for key in totals:
                totals[key] += out.stats[key]
            slots = max(slots, out.stats["slots"])
            if len(pending) == 2:  # the previous group was graded while this one decoded
                collect(*pending.pop(0))
        for item in pending:  # the last group's grading is not hidden
            collect(*item)
    mask = np.repeat(states.estimated[:, :, None], k, axis=2)
    stats = {"mc/" + key: float(v) for key, v in totals.items()}
    stats |= {"mc/slots": float(slots), "mc/live_fraction": totals["live_steps"] / max(totals["slot_steps"], 1),
              "mc/grade_errors": float(errors[0])}
    return rewards, mask, stats


def mc_state_values(env: RolloutEnv, ep: Episodes, states: StepStates, rng: jax.Array, k: int,
                    host: Optional[HostWork] = None) -> tuple[np.ndarray, dict]:
    """V̂(s) f32[B, S] of every estimated state (the mean reward of its K continuations) and `mc/*` metrics."""
    rewards, mask, stats = mc_rewards(env, ep, states, rng, k, host)
    est = values_lib.mc_values(rewards, mask)
    metrics = {key: float(v) for key, v in values_lib.mc_value_metrics(est, states.estimated).items()}
    return np.asarray(est.value), stats | metrics


class AdaptiveRollouts(NamedTuple):
    """Outcome of adaptive K over the U distinct states of an iteration's episodes."""

    values: np.ndarray  # f32[B, S] unbiased V̂ of every estimated state (0 elsewhere)
    uid: np.ndarray     # int64[B, S] distinct-state id (-1: not estimated)
    n: np.ndarray       # int64[U] rollouts drawn per distinct state
    s: np.ndarray       # int64[U] successes
    tier: np.ndarray    # int64[U] evidence tier (0 without evidence)
    outcomes: np.ndarray  # int8[U, max_rollouts] 0/1 reward of each rollout in drawing order; -1 = not drawn
    calls: int          # decode calls (rounds, several rounds drawn at once where no decision falls between)


def next_increment(n: np.ndarray, rules: tuple, tier: np.ndarray, one_round: bool) -> np.ndarray:
    """int[U] rollouts to draw next for states with n rollouts: up to the next round end at which
    their tier's rule can stop (n + round_size, or the first round end >= min_rollouts; at most
    max_rollouts), so no stop decision is skipped; one round each when `one_round`."""
    out = np.zeros(n.shape, np.int64)
    for t, rule in enumerate(rules):
        m = tier == t
        step = np.full(n.shape, rule.round_size, np.int64)
        if not one_round:
            ahead = -(-(np.maximum(rule.min_rollouts, n + rule.round_size) - n) // rule.round_size) * rule.round_size
            step = np.maximum(step, ahead)
        out[m] = np.minimum(step, rule.max_rollouts - n)[m]
    return out


def adaptive_rollouts(env: RolloutEnv, ep: Episodes, states: StepStates, episode_rewards: np.ndarray,
                      rng: jax.Array, acfg, budget_per_state: float = 0.0) -> tuple[AdaptiveRollouts, dict]:
    """VinePPO values with an adaptive number of rollouts per state (`rl.adaptive`, `vineppo.adaptive`).

    Rounds of continuations from the distinct estimated states (one trajectory cache for all
    rounds; the call drawing round r uses the key fold_in(rng, r)); after round 1 each state gets
    its evidence tier (`adaptive.evidence_tiers` from episode_rewards f32[B] and its neighbours'
    round-1 results; tier 0 for all when `acfg` has one rule); then states go on while their
    tier's rule says so (`adaptive.continue_mask`), several rounds per call where the rule cannot
    stop in between (one round per call when a total budget, budget_per_state × U, is set; its
    cuts go by a random priority). V̂ = `adaptive.adaptive_values` (exactly unbiased).
    With `env.batch_rows` > 0 the episodes go through in groups of that many rows, each group's
    states running all their rounds with the group's trajectory cache only (group g uses the key
    fold_in(rng, g), its distinct states and budget its own; keep it a multiple of the samples per
    problem so a problem's episodes are neighbours in one group), as `mc_rewards` does.
    Returns the outcome and `mc/*`, `adaptive/*` metrics.
    """
    rules = tuple(acfg.rules)
    b, s = states.starts.shape
    uid = np.full((b, s), -1, np.int64)
    parts, offset, calls, stats = [], 0, 0, {"rows": 0, "slot_steps": 0, "live_steps": 0, "grade_errors": 0}
    for part, key in episode_groups(b, env.batch_rows, rng):
        res, group_stats = _adaptive_group(env, ep.select(part), states.select(part), episode_rewards[part], key,
                                           acfg, budget_per_state)
        uid[part] = np.where(res.uid >= 0, res.uid + offset, -1)  # the group's distinct states, numbered on
        offset += len(res.n)
        parts.append(res)
        calls += res.calls
        stats = {key: stats[key] + group_stats[key] for key in stats}
    n, succ, tier = (np.concatenate([getattr(p, f) for p in parts]) for f in ("n", "s", "tier"))
    outcomes = np.concatenate([p.outcomes for p in parts])
    values = np.concatenate([p.values for p in parts])
    u = len(n)
    estimated = states.estimated
    most = np.array([rule.max_rollouts for rule in rules])[tier]  # [U] each state's tier maximum
    metrics = {
        "mc/unique_states": float(u),
        "mc/rows": float(stats["rows"]),
        "mc/live_fraction": stats["live_steps"] / max(stats["slot_steps"], 1),
        "mc/grade_errors": float(stats["grade_errors"]),
        "mc/num_states": float(estimated.sum()),
        "mc/value_mean": float(values[estimated].mean()) if estimated.any() else 0.0,
        "adaptive/rollouts_per_state": float(n.mean()) if u else 0.0,
        "adaptive/calls": float(calls),
        "adaptive/stopped_early_frac": float((n < most).mean()) if u else 0.0,
    }
    metrics |= {f"adaptive/tier{t}_frac": float((tier == t).mean()) if u else 0.0 for t in range(len(rules))}
    return AdaptiveRollouts(values, uid, n, succ, tier, outcomes, calls), metrics


def _adaptive_group(env: RolloutEnv, ep: Episodes, states: StepStates, episode_rewards: np.ndarray, rng: jax.Array,
                    acfg, budget_per_state: float) -> tuple[AdaptiveRollouts, dict]:
    """`adaptive_rollouts` for one group of episodes (all of `ep`), with its own trajectory cache."""
    rules = tuple(acfg.rules)
    step_starts, estimated = states.starts, states.estimated
    b, s = step_starts.shape
    uid, rep = sampling.unique_prefixes(ep.tokens, step_starts, estimated)
    u = len(rep)
    n = np.zeros(u, np.int64)
    succ = np.zeros(u, np.int64)
    tier = np.zeros(u, np.int64)
    total = int(np.ceil(budget_per_state * u)) if budget_per_state > 0 else None
    pri_rng = np.random.default_rng(np.asarray(jax.random.key_data(jax.random.fold_in(rng, 1 << 20))).ravel())
    trajectories = sampling.Trajectories(env, ep.tokens, ep.total_lens)  # one cache pass for all rounds
    outcomes = np.full((u, max(rule.max_rollouts for rule in rules)), -1, np.int8)
    running = np.ones(u, bool)
    inc = np.full(u, rules[0].round_size, np.int64)
    calls, stats = 0, {"rows": 0, "slot_steps": 0, "live_steps": 0, "grade_errors": 0}
    while running.any():
        counts = np.zeros((b, s), np.int64)
        counts[rep[running, 0], rep[running, 1]] = inc[running]
        out = trajectories.continue_from(step_starts, jax.random.fold_in(rng, calls), counts, state_mask=counts > 0)
        idx = np.nonzero(running)[0]
        r, bad = scored(grade_continuations(env, ep, step_starts, out, rep[idx, 0], rep[idx, 1], inc[idx]))
        stats["grade_errors"] += bad
        for j, i in enumerate(idx):
            outcomes[i, n[i] : n[i] + inc[i]] = r[j, : inc[i]]
        succ[idx] += r.sum(1).round().astype(np.int64)
        n[idx] += inc[idx]
        for key in ("rows", "slot_steps", "live_steps"):
            stats[key] += out.stats[key]
        calls += 1
        if calls == 1 and len(rules) > 1:
            tier = adaptive.evidence_tiers(uid, episode_rewards, n, succ)
        left = None if total is None else total - int(n.sum())
        running = adaptive.continue_mask(n, succ, running, acfg, tier, left, pri_rng.random(u))
        inc = next_increment(n, rules, tier, one_round=total is not None)
    v_u = adaptive.adaptive_values(n, succ, acfg, tier)
    values = np.where(uid >= 0, v_u[np.maximum(uid, 0)] if u else 0.0, 0.0).astype(np.float32)
    return AdaptiveRollouts(values, uid, n, succ, tier, outcomes, calls), stats


def critic_token_values(mesh, critic_params, critic_cfg, tokens: np.ndarray, rows_per_call: int) -> np.ndarray:
    """f32[B, T] critic values of every prefix (PPO), aligned like log-probs."""
    scorer = lambda p, t: value_scorer(p, t, model_cfg=critic_cfg)
    return score_rows(mesh, scorer, critic_params, tokens, rows_per_call)
