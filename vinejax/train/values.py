"""The values phase of an iteration: VinePPO's Monte Carlo state values (K continuations from
every step boundary, graded like episodes) and PPO's critic token values."""
from __future__ import annotations

import contextlib
import dataclasses
from typing import NamedTuple, Optional

import jax
import numpy as np

from vinejax import sampling
from vinejax.multihost import split_rows
from vinejax.rl import adaptive, pooling
from vinejax.rl import values as values_lib
from vinejax.sampling import RolloutEnv
from vinejax.train import host_work
from vinejax.train.episodes import EpisodeGroup, Episodes, finish_response, scored
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


def episode_groups(b: int, group_rows: int, rng: jax.Array):
    """(int[rows] episode indices, key) of each group of `group_rows` episodes (all B when <= 0).
    Every group gets `rng` itself: continuations draw with keys of the episodes' rows
    (`sampling.Trajectories` ids), so the grouping changes no draw."""
    group = b if group_rows <= 0 else group_rows
    for lo in range(0, b, group):
        yield np.arange(lo, min(lo + group, b)), rng


class MCOptions(NamedTuple):
    """How VinePPO's fixed-K MC draws and pools (`vineppo.pool_continuations`,
    `vineppo.rollouts_by_step`)."""

    pool: bool = False    # continuations count for the later states they pass through (`rl.pooling`)
    by_step: tuple = ()   # own continuations per step index (`rl.values.rollouts_by_step`); () = K


def pooling_decode(env: RolloutEnv, states: StepStates) -> tuple[RolloutEnv, np.ndarray]:
    """(env, int32[B, S] budgets) a pooling MC decode runs with (`rl.pooling`): each state's
    continuations may write what any later estimated state they could pass through needs
    (`pooling.extended_budgets`), `max_new_tokens` widened to hold it."""
    budgets = pooling.extended_budgets(states.starts, env.budgets(states.starts), states.estimated)
    width = max(pooling.decode_width(env.scfg.max_new_tokens, env.context), int(budgets.max(initial=1)))
    return env.replace(scfg=dataclasses.replace(env.scfg, max_new_tokens=width)), budgets


def passing(env: RolloutEnv, ep: Episodes, states: StepStates, out: sampling.ContinuationOutput) -> np.ndarray:
    """bool[B, S, K, S] `pooling.pass_through` of the continuations `out` of `states`, across the
    boundaries where no stop string of `env` is half matched (`pooling.clean_boundaries`)."""
    clean = pooling.clean_boundaries(env.stop_tables(), ep.tokens, states.starts, states.estimated)
    return pooling.pass_through(pooling.Continuations(out.tokens, out.lengths, out.finish_reason), ep.tokens,
                                states.starts, clean)


class MCGroups:
    """K continuations from the estimated states of groups of episodes, handed over one group at a
    time (`add`): each group's continuations decode on the devices (one group's trajectory KV
    cache there at a time) and are graded on `host`'s thread while the next device work runs (at
    most two groups' continuations held at a time). Continuation k of state i of the episode in
    row r of the iteration draws with fold_in(fold_in(fold_in(rng, r), i), k) (shared prefixes:
    the first episode with it), whatever the groups. `options.by_step` sets the count of each
    step index instead of K. `finish` returns the rewards of all, `values` their V̂ (pooled with
    `options.pool`: `rl.pooling`)."""

    def __init__(self, env: RolloutEnv, rng: jax.Array, k: int, host: HostWork, options: MCOptions = MCOptions()):
        self.env, self.rng, self.host, self.options = env, rng, host, options
        self.k = max(options.by_step) if options.by_step else k  # the widest count: slots of the rewards
        self.counts = lambda slots: values_lib.rollouts_by_step(k, options.by_step, slots)  # int64[S]
        self.pending, self.done, self.errors, self.slots = [], [], 0, 0
        self.totals = dict.fromkeys(("unique_states", "rows", "chunks", "slot_steps", "live_steps"), 0)

    def add(self, ep: Episodes, rows: np.ndarray, states: StepStates) -> None:
        """Continue the estimated states `states` of episodes `ep` (rows `rows` of the iteration).
        With `options.pool` (`rl.pooling`), each continuation may write what any later state it
        could pass through needs (`pooling.extended_budgets`, decoded with a wider `max_new_tokens`)."""
        env = self.env
        counts = np.broadcast_to(self.counts(states.starts.shape[1]), states.starts.shape)  # [B, S]
        budgets = env.budgets(states.starts)
        decode_env, decode_budgets = pooling_decode(env, states) if self.options.pool else (env, budgets)
        out = sampling.Trajectories(decode_env, ep.tokens, ep.total_lens, ids=rows).continue_from(
            states.starts, self.rng, counts if self.options.by_step else self.k, state_mask=states.estimated,
            budgets=decode_budgets)
        r, c = np.nonzero(states.estimated)
        graded = grade_continuations(env, ep, states.starts, out, r, c, counts[r, c], pool=self.host.pool)
        shared = None
        if self.options.pool:  # what the pooled values need besides the grades (the tokens are dropped here)
            cont = pooling.Continuations(None, out.lengths, out.finish_reason)
            shared = (cont, passing(env, ep, states, out), states.starts, budgets)
        drawn = states.estimated[..., None] & (np.arange(out.lengths.shape[2]) < counts[..., None])  # [B, S, K']
        self.pending.append((np.asarray(rows), drawn, self.host.track(graded), shared))
        for key in self.totals:
            self.totals[key] += out.stats[key]
        self.slots = max(self.slots, out.stats["slots"])
        if len(self.pending) == 2:  # the previous group was graded while this one decoded
            self._collect(self.pending.pop(0))

    def _collect(self, item) -> None:
        rows, drawn, waiter, shared = item
        rewards, bad = scored(self.host.wait(waiter))
        r, c = np.nonzero(drawn.any(-1))
        graded = np.zeros(drawn.shape, np.float32)                        # [B, S, K']
        graded[r, c] = rewards.reshape(len(r), drawn.shape[2])
        pooled = None
        if shared is not None:
            cont, through, starts, budgets = shared
            pooled = pooling.pooled_mc_values(graded, cont, through, starts, budgets, drawn)
            graded = np.where(cont.lengths <= budgets[..., None], graded, 0.0)  # own draws at their own budget
        wide = np.zeros(drawn.shape[:2] + (self.k,), np.float32)
        wide[..., :drawn.shape[2]] = graded
        self.done.append((rows[r], c, wide[r, c], rows, pooled))
        self.errors += bad

    def finish(self, estimated: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
        """(f32[B, S, K] rewards, their mask, `mc/*` stats) of every state added (estimated: bool[B, S]):
        each state's own continuations (K: the widest count)."""
        for item in self.pending:  # the last group's grading is not hidden
            self._collect(item)
        self.pending = []
        b, s = estimated.shape
        rewards = np.zeros((b, s, self.k), np.float32)
        for rows, cols, r, _, _ in self.done:
            rewards[rows, cols] = r
        mask = estimated[:, :, None] & (np.arange(self.k) < self.counts(s)[:, None])[None]
        t = self.totals
        stats = {"mc/" + key: float(v) for key, v in t.items()}
        stats |= {"mc/slots": float(self.slots), "mc/live_fraction": t["live_steps"] / max(t["slot_steps"], 1),
                  "mc/grade_errors": float(self.errors)}
        return rewards, mask, stats

    def values(self, estimated: np.ndarray) -> tuple[np.ndarray, dict]:
        """(V̂ f32[B, S], metrics) of every state added: the mean of its own rewards, or with
        `options.pool` the pooled mean (`rl.pooling.pooled_values`; `mc/pooled_draws`: the extra
        draws per estimated state)."""
        rewards, mask, stats = self.finish(estimated)
        if not self.options.pool:
            return values_of(rewards, mask, stats, estimated)
        b, s = estimated.shape
        est = values_lib.MCValues(*(np.zeros((b, s), dt) for dt in (np.float32, np.float32, np.int32)))
        for _, _, _, rows, pooled in self.done:
            for whole, part in zip(est, pooled):
                whole[rows] = part
        metrics = {key: float(v) for key, v in values_lib.mc_value_metrics(est, estimated).items()}
        extra = (est.count.sum() - mask.sum()) / max(int(estimated.sum()), 1)
        return est.value, stats | metrics | {"mc/pooled_draws": float(extra)}


def mc_rewards(env: RolloutEnv, ep: Episodes, states: StepStates, rng: jax.Array, k: int,
               host: Optional[HostWork] = None):
    """Rewards of K continuations from every estimated state: f32[B, S, K] and its mask, plus stats.

    Each continuation may write `env.budgets` of its prefix tokens (the official budget:
    min(max_new_tokens, context − prefix)), not what is left of its episode's own budget. With
    `env.group_rows` > 0 the episodes go through in groups of that many rows (`MCGroups`): only
    one group's trajectory KV cache is on the devices at a time (a 512-episode iteration of
    DeepSeekMath-7B would need ~770 GB for all of them); keep it a multiple of the samples per
    problem so a problem's shared prompt state is continued once. Continuations draw with keys of
    the episodes' rows (0..B−1), so the groups change no value. With `host`, a group's
    continuations are graded on its worker thread while the devices decode the next group's;
    without, each is graded in turn.
    """
    with added_groups(env, ep, states, rng, k, host) as groups:
        return groups.finish(states.estimated)


@contextlib.contextmanager
def added_groups(env: RolloutEnv, ep: Episodes, states: StepStates, rng: jax.Array, k: int,
                 host: Optional[HostWork] = None, options: MCOptions = MCOptions()):
    """`MCGroups` with every group of `env.group_rows` episodes added (`episode_groups`), inside
    `host`'s session (a session without overlap when None): read its rewards or values in the block."""
    with contextlib.nullcontext(host) if host is not None else host_work.session(overlap=False) as host:
        groups = MCGroups(env, rng, k, host, options)
        for part, _ in episode_groups(len(ep.tokens), env.group_rows, rng):
            groups.add(ep.select(part), part, states.select(part))
        yield groups


def mc_state_values(env: RolloutEnv, ep: Episodes, states: StepStates, rng: jax.Array, k: int,
                    host: Optional[HostWork] = None, options: MCOptions = MCOptions()) -> tuple[np.ndarray, dict]:
    """V̂(s) f32[B, S] of every estimated state (the mean reward of its K continuations, or
    `options.by_step`'s; with `options.pool`, and of the continuations of earlier states that
    pass through it: `rl.pooling`) and `mc/*` metrics. The groups and draws are `mc_rewards`'s."""
    with added_groups(env, ep, states, rng, k, host, options) as groups:
        return groups.values(states.estimated)


def values_of(rewards: np.ndarray, mask: np.ndarray, stats: dict, estimated: np.ndarray) -> tuple[np.ndarray, dict]:
    """(V̂ f32[B, S], metrics) of MC rewards f32[B, S, K] (mask likewise) and their `mc/*` stats."""
    est = values_lib.mc_values(rewards, mask)
    metrics = {key: float(v) for key, v in values_lib.mc_value_metrics(est, estimated).items()}
    return np.asarray(est.value), stats | metrics


class EarlyMC:
    """VinePPO's MC values with each group's continuations started as soon as the group is
    sampled and split (`Estimator.start`): `add` takes an `episodes.EpisodeGroup`, its states
    0..num_steps−1 estimated up to `max_value_step` (`StepStates.of`); `values(states)` then
    gives what `mc_state_values` would, draw for draw."""

    def __init__(self, env: RolloutEnv, rng: jax.Array, k: int, host: HostWork, max_value_step: Optional[int],
                 options: MCOptions = MCOptions()):
        self.groups, self.cap = MCGroups(env, rng, k, host, options), max_value_step

    def add(self, group: EpisodeGroup) -> None:
        self.groups.add(group.episodes, group.rows, StepStates.of(group.starts, group.num_steps, self.cap))

    def values(self, states: StepStates) -> tuple[np.ndarray, dict]:
        return self.groups.values(states.estimated)


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
    With `env.group_rows` > 0 the episodes go through in groups of that many rows, each group's
    states running all their rounds with the group's trajectory cache only (its distinct states
    and budget its own; keep it a multiple of the samples per problem so a problem's episodes are
    neighbours in one group), as `mc_rewards` does; draws use keys of the episodes' rows.
    Returns the outcome and `mc/*`, `adaptive/*` metrics.
    """
    rules = tuple(acfg.rules)
    b, s = states.starts.shape
    uid = np.full((b, s), -1, np.int64)
    parts, offset, calls, stats = [], 0, 0, {"rows": 0, "slot_steps": 0, "live_steps": 0, "grade_errors": 0}
    for part, key in episode_groups(b, env.group_rows, rng):
        res, group_stats = _adaptive_group(env, ep.select(part), states.select(part), episode_rewards[part], key,
                                           acfg, budget_per_state, part)
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
                    acfg, budget_per_state: float, ids: np.ndarray) -> tuple[AdaptiveRollouts, dict]:
    """`adaptive_rollouts` for one group of episodes (all of `ep`, rows `ids` of the iteration),
    with its own trajectory cache."""
    rules = tuple(acfg.rules)
    step_starts, estimated = states.starts, states.estimated
    b, s = step_starts.shape
    uid, rep = sampling.unique_prefixes(ep.tokens, step_starts, estimated)
    u = len(rep)
    n = np.zeros(u, np.int64)
    succ = np.zeros(u, np.int64)
    tier = np.zeros(u, np.int64)
    total = int(np.ceil(budget_per_state * u)) if budget_per_state > 0 else None
    first = int(ids[0]) if len(ids) else 0  # the group's priorities: its own stream
    pri_rng = np.random.default_rng(np.asarray(jax.random.key_data(jax.random.fold_in(rng, (1 << 20) + first))).ravel())
    trajectories = sampling.Trajectories(env, ep.tokens, ep.total_lens, ids=ids)  # one cache pass for all rounds
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
