"""Adaptive number of Monte Carlo rollouts per VinePPO state (``vineppo.adaptive``).

VinePPO's V̂(s) is the mean 0/1 reward of K = 9 continuations from every state (`values.py`).
Many states are settled (the value is 0 or 1, e.g. after a wrong step or once the answer is as
good as written), and 9 rollouts there are wasted. This module spends rollouts in rounds:

Rule (decided on host between decode calls; all states of an iteration run together):
  round 1: ``first_round`` rollouts for every state; then rounds of ``round_size`` rollouts for
  the states still running, up to ``max_rollouts``. After a round a state with n rollouts and
  s successes stops when
      n >= max_rollouts,  or  n >= min_rollouts and se(n, s) <= stop_stderr,
      se(n, s) = sqrt(p̂ (1 − p̂) / n),  p̂ = s / n,
  so a unanimous state (s = 0 or s = n, se = 0) stops at once. An optional total budget caps
  the rollouts of the iteration: when the states that ask for another round would overrun it,
  only those ranked first by a ``priority`` that does NOT depend on their own rollouts (e.g. a
  random permutation drawn for the round) get it.

Estimate: optional stopping biases the plain mean s/n (a state stopped after 3 failures reports
0, one that went on reports more: for p = 0.1, 3 then up to 9, E[s/n] = 0.052 instead of 0.1). Instead V̂ = f(N, S) = E[X_1 | N, S], the Rao–Blackwellisation of the first rollout X_1,
which is unbiased because X_1 is: E f(N, S) = E X_1 = p for every p.
Why f is a table of counts: the stop decision depends only on (n, s) at round ends, and budget
truncation depends on the state only through "still running" (the same for every path that
reaches a node), so every 0/1 sequence x that reaches node (n, s) still running has
probability p^s (1 − p)^(n − s) · g(n, s) with g the same for all of them. Conditioning on
(N, S) = (n, s) makes these sequences equally likely, and
      f(n, s) = A1(n, s) / A(n, s),
A(n, s) = number of 0/1 sequences of length n with s ones whose path did not stop at an earlier
round end, A1(n, s) = those among them with x_1 = 1. With no early stop (stop_stderr < 0)
f(n, s) = s / n, the plain mean. f is tabulated once per rule (`estimate_table`).

Shapes: the rule functions take any array shape ``[...]`` (one entry per unique state); tables
are ``[max_rollouts + 1, max_rollouts + 1]`` indexed ``[n, s]``.
"""
from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import NamedTuple

import numpy as np


class AdaptiveConfig(NamedTuple):
    """One adaptive-K rule (hashable: tables are cached per rule)."""

    first_round: int = 3      # rollouts every state gets in round 1
    round_size: int = 3       # rollouts per later round
    max_rollouts: int = 15    # per state; must be first_round + m * round_size
    min_rollouts: int = 0     # no early stop before this many rollouts
    stop_stderr: float = 0.1  # stop once sqrt(p̂(1−p̂)/n) <= this (< 0: never stop early)


def validate(cfg: AdaptiveConfig) -> None:
    """Raise ValueError naming the first impossible field of ``cfg``."""
    if cfg.first_round < 1:
        raise ValueError(f"adaptive.first_round must be >= 1, got {cfg.first_round}")
    if cfg.round_size < 1:
        raise ValueError(f"adaptive.round_size must be >= 1, got {cfg.round_size}")
    if cfg.max_rollouts < cfg.first_round or (cfg.max_rollouts - cfg.first_round) % cfg.round_size:
        raise ValueError(f"adaptive.max_rollouts must be first_round + m * round_size "
                         f"({cfg.first_round} + m * {cfg.round_size}), got {cfg.max_rollouts}")
    if cfg.min_rollouts < 0:
        raise ValueError(f"adaptive.min_rollouts must be >= 0, got {cfg.min_rollouts}")


def round_ends(cfg: AdaptiveConfig) -> np.ndarray:
    """int[R]: cumulative rollouts after each round, first_round, first_round + round_size, … max."""
    validate(cfg)
    return np.arange(cfg.first_round, cfg.max_rollouts + 1, cfg.round_size)


def round_sizes(cfg: AdaptiveConfig) -> np.ndarray:
    """int[R]: rollouts drawn in each round (first_round, then round_size …)."""
    ends = round_ends(cfg)
    return np.diff(ends, prepend=0)


def should_stop(n, s, cfg: AdaptiveConfig) -> np.ndarray:
    """bool[...]: the rule's stop decision for a state with n rollouts and s successes at a round end.

    n, s: int[...] (same shape). n must be a round end (> 0).
    """
    n = np.asarray(n)
    s = np.asarray(s)
    nf = np.maximum(n, 1).astype(np.float64)
    phat = s / nf
    se = np.sqrt(phat * (1.0 - phat) / nf)
    early = (n >= cfg.min_rollouts) & (se <= cfg.stop_stderr)
    return (n >= cfg.max_rollouts) | early


def path_counts(cfg: AdaptiveConfig) -> tuple[np.ndarray, np.ndarray]:
    """Exact path counts (Python ints in object arrays [n_max + 1, n_max + 1], indexed [n, s]).

    A[n, s]: 0/1 sequences of length n with s ones that reach round end n still running (did not
    stop at an earlier round end); A1[n, s]: those with first element 1. 0 off round ends.
    """
    ends = round_ends(cfg)
    m = cfg.max_rollouts
    a = np.zeros((m + 1, m + 1), dtype=object)
    a1 = np.zeros((m + 1, m + 1), dtype=object)
    k0 = cfg.first_round
    for s in range(k0 + 1):
        a[k0, s] = math.comb(k0, s)
        a1[k0, s] = math.comb(k0 - 1, s - 1) if s >= 1 else 0
    for prev, cur in zip(ends[:-1], ends[1:]):
        k = int(cur - prev)
        for s in range(prev + 1):
            if a[prev, s] == 0 or should_stop(prev, s, cfg):
                continue
            for j in range(k + 1):
                a[cur, s + j] += a[prev, s] * math.comb(k, j)
                a1[cur, s + j] += a1[prev, s] * math.comb(k, j)
    return a, a1


@functools.lru_cache(maxsize=32)
def estimate_table(cfg: AdaptiveConfig) -> np.ndarray:
    """f64[n_max + 1, n_max + 1]: unbiased estimate f(n, s) = A1/A = E[X_1 | N = n, S = s].

    Defined wherever a running state can be (every reachable round-end node, stopped or not, so
    budget truncation can end a state anywhere); NaN at unreachable [n, s].
    """
    a, a1 = path_counts(cfg)
    out = np.full(a.shape, np.nan)
    for n, s in zip(*np.nonzero(a)):
        out[n, s] = float(Fraction(a1[n, s], a[n, s]))
    out.setflags(write=False)
    return out


def adaptive_values(n, s, cfg: AdaptiveConfig) -> np.ndarray:
    """f32[...]: unbiased V̂ = f(n, s) per state; 0 where n == 0 (state not estimated).

    n, s: int[...] final rollouts and successes of each state, as produced by the rule (possibly
    cut short by the total budget). Raises ValueError for an (n, s) the rule cannot produce.
    """
    n = np.asarray(n, np.int64)
    s = np.asarray(s, np.int64)
    table = estimate_table(cfg)
    est = n > 0
    if np.any(est & ((n > cfg.max_rollouts) | (s < 0) | (s > n))):
        raise ValueError(f"adaptive_values: (n, s) outside 0 <= s <= n <= {cfg.max_rollouts}")
    f = table[np.where(est, n, 0), np.where(est, s, 0)]
    if np.any(est & np.isnan(f)):
        raise ValueError("adaptive_values: some (n, s) cannot be reached under this rule "
                         "(n must be a round end reached without stopping earlier)")
    return np.where(est, f, 0.0).astype(np.float32)


def continue_mask(n, s, running, cfg: AdaptiveConfig, budget_left: int | None = None,
                  priority=None) -> np.ndarray:
    """bool[...]: which states get another round, after the round that produced (n, s).

    n, s: int[...] rollouts / successes so far; running: bool[...] states still being estimated.
    budget_left: rollouts the iteration may still spend (None = no total budget). When the states
    that want another round need more, the first ``budget_left // size`` of them by ``priority``
    (float[...], larger first; ties by position) get it. ``priority`` must not depend on any
    state's own rollouts (draw it at random per round), else the estimate is no longer unbiased.
    """
    n = np.asarray(n)
    s = np.asarray(s)
    want = np.asarray(running, bool) & (n > 0) & ~should_stop(n, s, cfg)
    if budget_left is None or not want.any():
        return want
    size = cfg.round_size
    slots = max(int(budget_left), 0) // size
    if want.sum() <= slots:
        return want
    pri = np.zeros(n.shape) if priority is None else np.asarray(priority, np.float64)
    flat_want = want.reshape(-1)
    idx = np.nonzero(flat_want)[0]
    order = idx[np.argsort(-pri.reshape(-1)[idx], kind="stable")]
    keep = np.zeros_like(flat_want)
    keep[order[:slots]] = True
    return keep.reshape(want.shape)


class RoundsResult(NamedTuple):
    """Outcome of the rule on one batch of states: n, s int[...]; value f32[...]; rounds run."""

    n: np.ndarray
    s: np.ndarray
    value: np.ndarray
    rounds: int


def run_rounds(outcomes, cfg: AdaptiveConfig, states=None, total_budget: int | None = None,
               rng: np.random.Generator | None = None) -> RoundsResult:
    """Apply the rule to pre-drawn rollout outcomes, as the sampler would round by round.

    outcomes: {0,1}[..., max_rollouts]: reward of the j-th rollout a state would draw (only the
    first n are used); states: bool[...] states to estimate (default all). total_budget caps all
    rollouts (must cover round 1); ``rng`` draws the random priority when the budget binds
    (default: a fixed seed-0 generator, so results are deterministic).
    Reference implementation of the loop for tests and simulations; the trainer runs the same
    steps with `continue_mask` between decode calls.
    """
    x = np.asarray(outcomes)
    validate(cfg)
    if x.shape[-1] < cfg.max_rollouts:
        raise ValueError(f"run_rounds: outcomes last axis {x.shape[-1]} < max_rollouts {cfg.max_rollouts}")
    shape = x.shape[:-1]
    states = np.ones(shape, bool) if states is None else np.asarray(states, bool)
    rng = np.random.default_rng(0) if rng is None else rng
    sizes = round_sizes(cfg)
    n = np.zeros(shape, np.int64)
    s = np.zeros(shape, np.int64)
    if total_budget is not None and total_budget < cfg.first_round * states.sum():
        raise ValueError(f"total_budget {total_budget} < first round ({cfg.first_round} x "
                         f"{int(states.sum())} states)")
    running = states.copy()
    rounds = 0
    for r, size in enumerate(sizes):
        if not running.any():
            break
        drawn = np.take_along_axis(x, (n[..., None] + np.arange(size)).clip(max=x.shape[-1] - 1), -1)
        s = np.where(running, s + drawn.sum(-1), s)
        n = np.where(running, n + size, n)
        rounds += 1
        left = None if total_budget is None else total_budget - int(n.sum())
        pri = rng.random(shape)
        running = continue_mask(n, s, running, cfg, left, pri)
    return RoundsResult(n, s, adaptive_values(n, s, cfg), rounds)


def stop_distribution(p: float, cfg: AdaptiveConfig) -> np.ndarray:
    """f64[n_max + 1, n_max + 1]: probability that a state of true value p stops at [n, s]
    (no total budget). Sums to 1; E f(N, S) = Σ P·f = p."""
    a, _ = path_counts(cfg)
    ends = round_ends(cfg)
    out = np.zeros(a.shape)
    for n in ends:
        for s in range(n + 1):
            if a[n, s] and should_stop(n, s, cfg):
                # p^s (1-p)^(n-s) with 0^0 = 1
                out[n, s] = float(a[n, s]) * (p ** s) * ((1 - p) ** (n - s))
    return out


def expected_rollouts(p: float, cfg: AdaptiveConfig) -> float:
    """E[N] for a state of true value p under the rule (no total budget)."""
    d = stop_distribution(p, cfg)
    return float((d.sum(1) * np.arange(d.shape[0])).sum())
