"""Statistics of the value-prediction analysis, as small pure numpy functions.

Value estimates are compared with ground-truth values per state (MAE, MSE, Pearson r). Step
rankings are compared per state: over all pairs of a state's candidate actions, a prediction is
right when it orders the pair strictly the same way as the ground truth,
`(gt_i - gt_j) * (pred_i - pred_j) > 0`, so a tie on either side counts wrong (the official
`ActionRankingAnalyzer` rule; chance is at most 50%, and pairs the ground truth ties are wrong for
every predictor). The same count over the untied ground-truth pairs only is reported beside it.
Top-1: the probability that the predicted best candidate, ties broken uniformly at random, is a
best candidate by the ground truth (ground-truth ties at the top are all right).

Confidence intervals are percentile bootstrap intervals over resampled units (states): every
statistic is recomputed on `num_resamples` resamples with replacement, and the interval is the
(α/2, 1 − α/2) percentiles of those values (resamples where the statistic is undefined, e.g. a
Pearson r with a constant side, are left out).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def mae(pred, target) -> float:
    """Mean absolute error of pred f[N] against target f[N]."""
    return float(np.mean(np.abs(np.asarray(pred, np.float64) - np.asarray(target, np.float64))))


def mse(pred, target) -> float:
    """Mean squared error of pred f[N] against target f[N]."""
    return float(np.mean((np.asarray(pred, np.float64) - np.asarray(target, np.float64)) ** 2))


def pearson(pred, target) -> float:
    """Pearson correlation of pred f[N] and target f[N]; nan when either side is constant."""
    x = np.asarray(pred, np.float64) - np.mean(pred)
    y = np.asarray(target, np.float64) - np.mean(target)
    denom = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return float(np.sum(x * y) / denom) if denom > 0 else float("nan")


def pairwise_counts(pred, target) -> tuple[int, int, int]:
    """(pairs ordered strictly like the target, number of pairs, pairs the target does not tie)
    over one state's candidates pred f[C], target f[C]. Ties on either side count as wrong."""
    p, t = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    i, j = np.triu_indices(len(p), k=1)
    return int(np.sum((t[i] - t[j]) * (p[i] - p[j]) > 0)), len(i), int(np.sum(t[i] != t[j]))


def top1_accuracy(pred, target) -> float:
    """Probability that the predicted best of one state's candidates (pred f[C]; ties broken
    uniformly at random) is a best candidate by the target f[C]."""
    p, t = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    best = p == p.max()
    return float(np.mean(t[best] == t.max()))


def bootstrap_indices(num_units: int, num_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """int[R, N] unit indices of R resamples of N units with replacement."""
    if num_units < 1:
        raise ValueError("bootstrap needs at least one unit")
    return rng.integers(0, num_units, size=(num_resamples, num_units))


def percentile_interval(samples, confidence: float = 0.95) -> tuple[float, float]:
    """The (α/2, 1 − α/2) percentiles (linear interpolation) of the finite samples, α = 1 −
    confidence; (nan, nan) when none is finite."""
    s = np.asarray(samples, np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return float("nan"), float("nan")
    alpha = 1.0 - confidence
    lo, hi = np.percentile(s, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def bootstrap_ci(statistic: Callable[[np.ndarray], float], indices: np.ndarray,
                 confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic(unit_indices) -> float` over the resamples
    `indices` int[R, N] (from `bootstrap_indices`)."""
    return percentile_interval([statistic(row) for row in indices], confidence)


def estimate(statistic: Callable[[np.ndarray], float], indices: np.ndarray, confidence: float = 0.95) -> dict:
    """{"value": statistic over all units, "ci": [lo, hi]} (nan as None, for JSON)."""
    value = statistic(np.arange(indices.shape[1]))
    lo, hi = bootstrap_ci(statistic, indices, confidence)
    clean = lambda v: None if not np.isfinite(v) else float(v)
    return {"value": clean(value), "ci": [clean(lo), clean(hi)]}


def value_metrics(pred, target, indices: np.ndarray, confidence: float = 0.95) -> dict:
    """MAE, MSE and Pearson r of pred f[N] against target f[N], each with a bootstrap interval
    over the state resamples `indices` int[R, N]."""
    p, t = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    return {name: estimate(lambda idx: fn(p[idx], t[idx]), indices, confidence)
            for name, fn in (("mae", mae), ("mse", mse), ("pearson", pearson))}


def ranking_metrics(preds: Sequence, targets: Sequence, indices: np.ndarray, confidence: float = 0.95) -> dict:
    """Pairwise accuracy (correct pairs / pairs, pooled over states), the same over the pairs the
    target does not tie (`pairwise_untied`) and top-1 accuracy (mean over states) of per-state
    candidate predictions `preds[s]` f[C_s] against `targets[s]` f[C_s], with bootstrap intervals
    over the state resamples `indices` int[R, S]."""
    counts = np.array([pairwise_counts(p, t) for p, t in zip(preds, targets)], np.float64).reshape(-1, 3)
    top1 = np.array([top1_accuracy(p, t) for p, t in zip(preds, targets)], np.float64)
    ratio = lambda num, den: num / den if den > 0 else float("nan")
    return {"pairwise": estimate(lambda idx: ratio(counts[idx, 0].sum(), counts[idx, 1].sum()), indices, confidence),
            "pairwise_untied": estimate(lambda idx: ratio(counts[idx, 0].sum(), counts[idx, 2].sum()), indices,
                                        confidence),
            "top1": estimate(lambda idx: top1[idx].mean(), indices, confidence)}


def ranking_ceilings(targets: Sequence) -> dict:
    """What ties in the target allow: `untied_pairs` (the best possible pairwise accuracy),
    `chance_pairwise` (a random strict ordering: half the untied pairs; 0.5 on untied pairs) and
    `chance_top1` (a random pick: mean fraction of candidates that are best)."""
    untied, pairs, top = 0, 0, []
    for t in targets:
        t = np.asarray(t, np.float64)
        i, j = np.triu_indices(len(t), k=1)
        untied += int(np.sum(t[i] != t[j]))
        pairs += len(i)
        top.append(np.mean(t == t.max()))
    frac = untied / pairs if pairs else float("nan")
    chance_top1 = float(np.mean(top)) if top else float("nan")
    return {"untied_pairs": frac, "chance_pairwise": frac / 2, "chance_top1": chance_top1}
