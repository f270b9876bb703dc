"""Adaptive number of Monte Carlo rollouts per VinePPO state (``vineppo.adaptive``).

VinePPO's V̂(s) is the mean 0/1 reward of K = 9 continuations from every state (`values.py`).
Many states are settled (value exactly 0 or 1: after a wrong step, or once the answer is fixed),
and 9 rollouts there are wasted. Here rollouts come in rounds of ``round_size`` (one decode call
per round over the states still running), and each state follows the rule of its *tier*.

Rule (one per tier; host-side, between decode calls). After a round a state with n rollouts and
s successes stops when
    n >= max_rollouts,  or  n >= min_rollouts and se(n, s) <= stop_stderr,
    se(n, s) = sqrt(p̂ (1 − p̂) / n),  p̂ = s / n,
so with stop_stderr = 0 a state stops early only when unanimous (s = 0 or s = n), and with
stop_stderr < 0 it draws exactly max_rollouts (fixed K). An optional total budget caps an
iteration: when the states that ask for another round would overrun it, only those ranked first
by a ``priority`` that does NOT depend on their own rollouts (a random draw per round) go on.

Tiers (`evidence_tiers`): after round 1 every state gets a tier from information that is NOT its
own rollouts: the rewards R of the episodes that pass through it (each R is the outcome of one
continuation of the state, drawn by the episode itself, not by MC) and the round-1 results of
its neighbouring states (the previous and next step of those episodes):
    tier 0  all of that evidence agrees (all R equal and every neighbour unanimous at that value)
    tier 1  the episode rewards agree
    tier 2  otherwise
Default rules (rounds of 3): tier 0 may stop after round 1 (3 rollouts) if unanimous, tier 1
after round 3 (9), tier 2 always draws 12; every state stops at 12. Settled states mostly land in
tier 0 and stop at 3; uncertain ones get 9–12 (benchmarks/adaptive_k.py measures the trade).

Estimate: optional stopping biases the plain mean s/n (a state stopped after 3 failures reports
0, one that went on reports more: for p = 0.1, 3 then up to 9, E[s/n] = 0.052 instead of 0.1).
Instead V̂ = f(N, S) = E[X_1 | N, S], the Rao–Blackwellisation of the first rollout X_1, which
is unbiased because X_1 is: E f(N, S) = E X_1 = p for every p.
Why f is a table of counts: the stop decision depends only on (n, s) at round ends, the tier
only on other states and on R (independent of this state's rollouts), and budget truncation on
the state only through "still running" (the same for every path that reaches a node). So given
the tier, every 0/1 sequence x that reaches node (n, s) still running has probability
p^s (1 − p)^(n − s) · g(n, s) with g the same for all of them; conditioning on (N, S) = (n, s)
makes these sequences equally likely, and
      f(n, s) = A1(n, s) / A(n, s),
A(n, s) = number of 0/1 sequences of length n with s ones whose path did not stop at an earlier
round end, A1(n, s) = those among them with x_1 = 1. With no early stop f(n, s) = s / n, the
plain mean. f is tabulated once per rule (`estimate_table`). Caveat: with neighbour tiers AND a
binding total budget, a state's round-1 results move its neighbours' tiers and so the budget
left for it later, so exactness is then not guaranteed (no test claims it; without a budget,
or with R-only tiers, it is exact).

Rollout rewards must be 0/1 (VinePPO's are): the table counts successes.
Shapes: U unique states; rule functions take any shape ``[...]``; tables are
``[max_rollouts + 1, max_rollouts + 1]`` indexed ``[n, s]``.
"""
from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import Callable, NamedTuple, Optional, Union

import numpy as np


class Rule(NamedTuple):
    """The stopping rule of one tier (hashable: tables are cached per rule)."""

    round_size: int = 3       # rollouts per round (all rounds, the first included)
    min_rollouts: int = 3     # no early stop before this many rollouts
    max_rollouts: int = 12    # per state; a multiple of round_size
    stop_stderr: float = 0.0  # stop once sqrt(p̂(1−p̂)/n) <= this; 0: unanimity only; < 0: never


class AdaptiveConfig(NamedTuple):
    """Rules of tiers 0, 1, 2 (`evidence_tiers`); all share one round size."""

    rules: tuple = (Rule(3, 3, 12, 0.0), Rule(3, 9, 12, 0.0), Rule(3, 12, 12, 0.0))


def fixed_rule(k: int) -> Rule:
    """The paper's fixed K: one round of k rollouts, no early stop."""
    return Rule(round_size=k, min_rollouts=k, max_rollouts=k, stop_stderr=-1.0)


def validate(cfg: Union[Rule, AdaptiveConfig]) -> None:
    """Raise ValueError naming the first impossible field."""
    rules = (cfg,) if isinstance(cfg, Rule) else tuple(cfg.rules)
    if not rules:
        raise ValueError("adaptive.rules must hold at least one rule")
    for t, r in enumerate(rules):
        if r.round_size < 1:
            raise ValueError(f"adaptive rule {t}: round_size must be >= 1, got {r.round_size}")
        if r.max_rollouts < r.round_size or r.max_rollouts % r.round_size:
            raise ValueError(f"adaptive rule {t}: max_rollouts must be a positive multiple of round_size "
                             f"{r.round_size}, got {r.max_rollouts}")
        if not 0 <= r.min_rollouts <= r.max_rollouts:
            raise ValueError(f"adaptive rule {t}: min_rollouts must be in [0, max_rollouts], got {r.min_rollouts}")
        if r.round_size != rules[0].round_size:
            raise ValueError(f"adaptive rule {t}: round_size {r.round_size} differs from rule 0's "
                             f"{rules[0].round_size} (all tiers share the decode rounds)")


def round_ends(rule: Rule) -> np.ndarray:
    """int[R]: cumulative rollouts after each round: round_size, 2 round_size, … max_rollouts."""
    validate(rule)
    return np.arange(rule.round_size, rule.max_rollouts + 1, rule.round_size)


def should_stop(n, s, rule: Rule) -> np.ndarray:
    """bool[...]: the rule's stop decision for a state with n rollouts, s successes at a round end."""
    n = np.asarray(n)
    s = np.asarray(s)
    nf = np.maximum(n, 1).astype(np.float64)
    phat = s / nf
    se = np.sqrt(phat * (1.0 - phat) / nf)
    early = (n >= rule.min_rollouts) & (se <= rule.stop_stderr)
    return (n >= rule.max_rollouts) | early


def path_counts(rule: Rule) -> tuple[np.ndarray, np.ndarray]:
    """Exact path counts (Python ints in object arrays [max + 1, max + 1], indexed [n, s]).

    A[n, s]: 0/1 sequences of length n with s ones that reach round end n still running (did not
    stop at an earlier round end); A1[n, s]: those with first element 1. 0 off round ends.
    """
    ends = round_ends(rule)
    m, k = rule.max_rollouts, rule.round_size
    a = np.zeros((m + 1, m + 1), dtype=object)
    a1 = np.zeros((m + 1, m + 1), dtype=object)
    for s in range(k + 1):
        a[k, s] = math.comb(k, s)
        a1[k, s] = math.comb(k - 1, s - 1) if s >= 1 else 0
    for prev in ends[:-1]:
        for s in range(prev + 1):
            if a[prev, s] == 0 or should_stop(prev, s, rule):
                continue
            for j in range(k + 1):
                a[prev + k, s + j] += a[prev, s] * math.comb(k, j)
                a1[prev + k, s + j] += a1[prev, s] * math.comb(k, j)
    return a, a1


@functools.lru_cache(maxsize=64)
def estimate_table(rule: Rule) -> np.ndarray:
    """f64[max + 1, max + 1]: unbiased estimate f(n, s) = A1/A = E[X_1 | N = n, S = s].

    Defined wherever a running state can be (every reachable round-end node, stopped or not, so
    budget truncation can end a state anywhere); NaN at unreachable [n, s]. Read-only.
    """
    a, a1 = path_counts(rule)
    out = np.full(a.shape, np.nan)
    for n, s in zip(*np.nonzero(a)):
        out[n, s] = float(Fraction(a1[n, s], a[n, s]))
    out.setflags(write=False)
    return out


def _rules_and_tier(cfg: Union[Rule, AdaptiveConfig], tier, shape) -> tuple[tuple, np.ndarray]:
    rules = (cfg,) if isinstance(cfg, Rule) else tuple(cfg.rules)
    tier = np.zeros(shape, np.int64) if tier is None else np.broadcast_to(np.asarray(tier, np.int64), shape)
    if tier.size and (tier.min() < 0 or tier.max() >= len(rules)):
        raise ValueError(f"tier must be in [0, {len(rules)}), got values in [{tier.min()}, {tier.max()}]")
    return rules, tier


def adaptive_values(n, s, cfg: Union[Rule, AdaptiveConfig], tier=None) -> np.ndarray:
    """f32[...]: unbiased V̂ = f_tier(n, s) per state; 0 where n == 0 (state not estimated).

    n, s: int[...] final rollouts and successes of each state as produced by the rule of its
    tier (int[...], default 0), possibly cut short by the total budget. Raises ValueError for an
    (n, s) that rule cannot produce.
    """
    n = np.asarray(n, np.int64)
    s = np.asarray(s, np.int64)
    rules, tier = _rules_and_tier(cfg, tier, n.shape)
    out = np.zeros(n.shape, np.float64)
    for t, rule in enumerate(rules):
        m = (tier == t) & (n > 0)
        if not m.any():
            continue
        if np.any((n[m] > rule.max_rollouts) | (s[m] < 0) | (s[m] > n[m])):
            raise ValueError(f"adaptive_values: (n, s) outside 0 <= s <= n <= {rule.max_rollouts} (tier {t})")
        f = estimate_table(rule)[n[m], s[m]]
        if np.isnan(f).any():
            raise ValueError(f"adaptive_values: some (n, s) cannot be reached under the rule of tier {t} "
                             "(n must be a round end reached without stopping earlier)")
        out[m] = f
    return out.astype(np.float32)


def continue_mask(n, s, running, cfg: Union[Rule, AdaptiveConfig], tier=None,
                  budget_left: Optional[int] = None, priority=None) -> np.ndarray:
    """bool[...]: which states get another round, after the round that produced (n, s).

    n, s: int[...] rollouts / successes so far; running: bool[...] states still being estimated;
    tier: int[...] rule index per state (default 0). budget_left: rollouts the iteration may still
    spend (None = no total budget). When the states that want another round need more, the first
    ``budget_left // round_size`` of them by ``priority`` (float[...], larger first; ties by
    position) get it. ``priority`` must not depend on any state's own rollouts (draw it at random
    per round), else the estimate is no longer unbiased.
    """
    n = np.asarray(n)
    s = np.asarray(s)
    rules, tier = _rules_and_tier(cfg, tier, n.shape)
    stop = np.ones(n.shape, bool)
    for t, rule in enumerate(rules):
        stop = np.where(tier == t, should_stop(n, s, rule), stop)
    want = np.asarray(running, bool) & (n > 0) & ~stop
    if budget_left is None or not want.any():
        return want
    slots = max(int(budget_left), 0) // rules[0].round_size
    if want.sum() <= slots:
        return want
    pri = np.zeros(n.shape) if priority is None else np.asarray(priority, np.float64)
    idx = np.nonzero(want.reshape(-1))[0]
    order = idx[np.argsort(-pri.reshape(-1)[idx], kind="stable")]
    keep = np.zeros(want.size, bool)
    keep[order[:slots]] = True
    return keep.reshape(want.shape)


def evidence_tiers(state_ids, rewards, n1, s1) -> np.ndarray:
    """int[U]: tier of each unique state from evidence that is not its own rollouts.

    state_ids: int[B, S] unique-state id of each episode's state slot (-1: absent / not
      estimated); rewards: {0,1}[B] episode rewards; n1, s1: int[U] rollouts / successes of every
      unique state after round 1.
    Evidence of state u: R of every episode through u, and the round-1 results of the states just
    before and after u in those episodes (other than u). Tier 0: the evidence holds only 0s or
    only 1s (neighbours unanimous and equal to R); tier 1: the rewards agree; tier 2: otherwise.
    """
    ids = np.asarray(state_ids, np.int64)
    r = np.asarray(rewards, np.float64)
    n1 = np.asarray(n1, np.int64)
    s1 = np.asarray(s1, np.int64)
    u = n1.shape[0]
    if ids.ndim != 2 or r.shape != (ids.shape[0],):
        raise ValueError(f"evidence_tiers: state_ids must be [B, S] and rewards [B], got {ids.shape} and {r.shape}")
    if ids.max(initial=-1) >= u:
        raise ValueError(f"evidence_tiers: state id {ids.max()} >= number of states {u}")
    valid = ids >= 0
    rr = np.broadcast_to(r[:, None], ids.shape)
    any_one = np.zeros(u, bool)   # some evidence says 1
    any_zero = np.zeros(u, bool)  # some evidence says 0
    np.logical_or.at(any_one, ids[valid], rr[valid] > 0.5)
    np.logical_or.at(any_zero, ids[valid], rr[valid] < 0.5)
    rewards_agree = ~(any_one & any_zero)
    for shift in (-1, 1):  # neighbour = previous / next state slot of the same episode
        nb = np.full(ids.shape, -1)
        if shift == -1:
            nb[:, 1:] = ids[:, :-1]
        else:
            nb[:, :-1] = ids[:, 1:]
        pair = valid & (nb >= 0) & (nb != ids)
        me, w = ids[pair], nb[pair]
        np.logical_or.at(any_one, me, s1[w] > 0)
        np.logical_or.at(any_zero, me, s1[w] < n1[w])
    agree = ~(any_one & any_zero)
    return np.where(agree, 0, np.where(rewards_agree, 1, 2)).astype(np.int64)


class RoundsResult(NamedTuple):
    """Outcome of the rule on a batch of states: n, s, tier int[...]; value f32[...]; rounds run."""

    n: np.ndarray
    s: np.ndarray
    tier: np.ndarray
    value: np.ndarray
    rounds: int


def run_rounds(outcomes, cfg: Union[Rule, AdaptiveConfig], tier: Union[None, np.ndarray, Callable] = None,
               states=None, total_budget: Optional[int] = None,
               rng: Optional[np.random.Generator] = None) -> RoundsResult:
    """Apply the rules to pre-drawn rollout outcomes, round by round, as the sampler would.

    outcomes: {0,1}[..., M]: reward of the j-th rollout a state would draw (only the first n are
    used; M >= the largest max_rollouts). tier: int[...] per state, or a function
    ``tier(n, s) -> int[...]`` called once after round 1 (it must not use a state's own entry,
    e.g. `evidence_tiers`). states: bool[...] states to estimate (default all). total_budget caps
    all rollouts (must cover round 1); ``rng`` draws the random priority when the budget binds
    (default: seed 0, so results are deterministic).
    Reference implementation of the sampler loop, for tests and simulations.
    """
    validate(cfg)
    rules = (cfg,) if isinstance(cfg, Rule) else tuple(cfg.rules)
    x = np.asarray(outcomes)
    k = rules[0].round_size
    most = max(r.max_rollouts for r in rules)
    if x.shape[-1] < most:
        raise ValueError(f"run_rounds: outcomes last axis {x.shape[-1]} < max_rollouts {most}")
    shape = x.shape[:-1]
    states = np.ones(shape, bool) if states is None else np.asarray(states, bool)
    if total_budget is not None and total_budget < k * states.sum():
        raise ValueError(f"total_budget {total_budget} < first round ({k} x {int(states.sum())} states)")
    rng = np.random.default_rng(0) if rng is None else rng
    n = np.zeros(shape, np.int64)
    s = np.zeros(shape, np.int64)
    t = None if callable(tier) else tier
    running = states.copy()
    rounds = 0
    while running.any():
        drawn = np.take_along_axis(x, np.minimum(n[..., None] + np.arange(k), x.shape[-1] - 1), -1)
        s = np.where(running, s + drawn.sum(-1), s)
        n = np.where(running, n + k, n)
        rounds += 1
        if rounds == 1 and callable(tier):
            t = np.asarray(tier(n, s), np.int64)
        left = None if total_budget is None else total_budget - int(n.sum())
        running = continue_mask(n, s, running, cfg, t, left, rng.random(shape))
    _, t = _rules_and_tier(cfg, t, shape)
    return RoundsResult(n, s, np.array(t), adaptive_values(n, s, cfg, t), rounds)


def stop_distribution(p: float, rule: Rule) -> np.ndarray:
    """f64[max + 1, max + 1]: probability that a state of true value p stops at [n, s] under
    ``rule`` (no total budget). Sums to 1; Σ P·f = p."""
    a, _ = path_counts(rule)
    out = np.zeros(a.shape)
    for n in round_ends(rule):
        for s in range(n + 1):
            if a[n, s] and should_stop(n, s, rule):
                out[n, s] = float(a[n, s]) * (p ** s) * ((1 - p) ** (n - s))  # 0^0 = 1
    return out


def expected_rollouts(p: float, rule: Rule) -> float:
    """E[N] for a state of true value p under ``rule`` (no total budget)."""
    d = stop_distribution(p, rule)
    return float((d.sum(1) * np.arange(d.shape[0])).sum())
