"""Paired comparisons of two methods over seeds, and what happened in a run that collapsed.

Seeds are paired: seed s gives every method the same problems, in the same order, and the same
evaluation problems (`experiments/compare.py`), so the per-seed difference d_s = acc_A(s) − acc_B(s)
at one evaluation removes the part of the seed's luck both methods share. Its 95% interval is the
t interval mean(d) ± t_{0.975, n−1} · sd(d) / √n over the n paired seeds (sd with ddof 1), exact
for normal differences; with 5 seeds t = 2.776.

A collapse is read from a run's per-iteration metrics (`metrics.jsonl`): the training reward
falling far below where the run started (and, if asked, the KL to the reference exceeding a bound:
not by default, since healthy runs that unlearn the SFT policy's wrong steps reach several nats
per sequence), with the KL, the loss guards that fired on the way (the non-finite guard's skipped
steps, the ratio rule's zeroed micro-batches) and the PPO ratio and clip fraction at the worst
iteration.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np
from scipy import stats

from vinejax.analysis.curves import Curve


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """A − B at one evaluation over the paired seeds."""

    steps: float  # optimizer steps at the evaluation (the same for both methods)
    mean: float
    low: float  # 95% t interval (nan for fewer than 2 pairs)
    high: float
    seeds: int
    values: tuple  # the per-seed differences, in seed order


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the t interval of the mean of `values` f[n]; low/high nan when n < 2."""
    v = np.asarray(values, np.float64)
    mean = float(v.mean())
    if v.size < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    return mean, mean - float(half), mean + float(half)


def paired_differences(a: dict, b: dict, confidence: float = 0.95) -> list[PairedDifference]:
    """A − B at every evaluation both have, over the seeds both have.

    a, b: {seed: Curve}. Evaluations are matched by index and must sit at the same step counts.
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("paired_differences: the two methods share no seed")
    n = min(min(len(a[s].accuracy), len(b[s].accuracy)) for s in seeds)
    out = []
    for e in range(n):
        steps = {float(a[s].steps[e]) for s in seeds} | {float(b[s].steps[e]) for s in seeds}
        if len(steps) != 1:
            raise ValueError(f"paired_differences: evaluation {e} is at different steps across runs: {sorted(steps)}")
        d = [float(a[s].accuracy[e] - b[s].accuracy[e]) for s in seeds]
        mean, low, high = t_interval(d, confidence)
        out.append(PairedDifference(steps.pop(), mean, low, high, len(seeds), tuple(d)))
    return out


def steps_to_threshold(curve: Curve, threshold: float) -> Optional[float]:
    """Optimizer steps at the first evaluation with accuracy >= threshold, or None (never)."""
    hits = np.flatnonzero(curve.accuracy >= threshold - 1e-9)
    return float(curve.steps[hits[0]]) if hits.size else None


@dataclasses.dataclass(frozen=True)
class CollapseReport:
    """The worst moment of one run's training, from its per-iteration metrics."""

    collapsed: bool
    start_reward: float  # training reward of the first iteration
    end_reward: float  # of the last iteration: at or above start_reward = a dip the run recovered from
    min_reward: float
    min_reward_iteration: int
    max_kl: float  # KL to the reference, nats per sequence (max over iterations)
    max_kl_iteration: int
    clipfrac_at_max_kl: float
    ratio_at_max_kl: float  # mean PPO ratio over the worst iteration's steps
    max_ratio: float  # the largest iteration-mean ratio
    ratio_rule_iterations: int  # iterations in which the ratio rule zeroed a micro-batch's loss
    nonfinite_iterations: int  # iterations in which the non-finite guard skipped an optimizer step
    reason: str  # "" or what made it a collapse


def finite_max(x: np.ndarray) -> float:
    """The largest finite entry of x, nan when there is none."""
    x = x[np.isfinite(x)]
    return float(x.max()) if x.size else float("nan")


def collapse_report(records: Sequence[dict], reward_drop: float = 0.7, kl_bound: float = float("inf")) -> CollapseReport:
    """Read a run's training records (those with `rewards/mean`) for a collapse: the training reward
    falls below `reward_drop` × its first value, or the KL per sequence exceeds `kl_bound` nats."""
    train = [r for r in records if isinstance(r.get("rewards/mean"), (int, float))]
    if not train:
        raise ValueError("collapse_report: no training records (rewards/mean) in the metrics")
    col = lambda key: np.asarray([float(r.get(key, np.nan)) for r in train], np.float64)
    reward, kl = col("rewards/mean"), col("kl")
    ratio, clip = col("ratio"), col("pg_clipfrac")
    worst_kl = int(np.nanargmax(kl)) if np.isfinite(kl).any() else 0  # [I] iterations
    worst_reward = int(np.argmin(reward))
    reasons = []
    if reward[worst_reward] < reward_drop * reward[0]:
        reasons.append(f"training reward {reward[0]:.2f} -> {reward[worst_reward]:.2f} at iteration {worst_reward}"
                       + (f", back to {reward[-1]:.2f} by the end" if reward[-1] >= reward[0] else ""))
    if finite_max(kl) > kl_bound:
        reasons.append(f"KL {kl[worst_kl]:.2f} nats at iteration {worst_kl}")
    elif reasons:
        reasons.append(f"max KL {kl[worst_kl]:.2f} nats at iteration {worst_kl}")
    return CollapseReport(
        collapsed=bool(reasons), start_reward=float(reward[0]), end_reward=float(reward[-1]), min_reward=float(reward[worst_reward]),
        min_reward_iteration=worst_reward, max_kl=finite_max(kl), max_kl_iteration=worst_kl,
        clipfrac_at_max_kl=float(clip[worst_kl]), ratio_at_max_kl=float(ratio[worst_kl]),
        max_ratio=finite_max(ratio), ratio_rule_iterations=int(np.sum(col("skipped") > 0)),
        nonfinite_iterations=int(np.sum(col("nonfinite") > 0)), reason="; ".join(reasons))
