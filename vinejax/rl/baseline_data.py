"""Training sets of the RL-free baselines, chosen from graded samples (host-side numpy).

Both builders take the flat arrays of one sampling round: ``rewards f32[B]`` (final rewards, i.e.
0 for responses that hit the length limit) and ``problem_index int[B]`` (which problem each row
answers). Problems are visited in order of their first row, and a problem's rows in row order,
as the official episode generators visit questions and their samples. Neither deduplicates
identical responses (the official code does not).

  restem_select        RestEM: correct responses, at most N per problem (the first N)
  dpo_positive_pairs   DPO+: (correct, incorrect) pairs per problem, at most N (a random subset)
"""
from __future__ import annotations

import numpy as np


def _check(rewards, problem_index, cap: int, cap_name: str):
    """Validated rewards f64[B] and {problem: [rows]} in order of first row."""
    r = np.asarray(rewards, dtype=np.float64)
    p = np.asarray(problem_index)
    if r.ndim != 1 or p.ndim != 1 or r.shape != p.shape:
        raise ValueError(f"rewards {r.shape} and problem_index {p.shape} must be 1-D of equal length")
    if not np.issubdtype(p.dtype, np.integer):
        raise ValueError(f"problem_index must hold integers, got dtype {p.dtype}")
    if not np.all(np.isfinite(r)):
        bad = int(np.flatnonzero(~np.isfinite(r))[0])
        raise ValueError(f"rewards must be finite; row {bad} is {r[bad]}")
    if cap != -1 and cap < 1:
        raise ValueError(f"{cap_name} must be >= 1 or -1 (no limit), got {cap}")
    groups: dict[int, list[int]] = {}
    for row, prob in enumerate(p.tolist()):
        groups.setdefault(prob, []).append(row)
    return r, groups


def restem_select(rewards, problem_index, max_per_problem: int = 10,
                  threshold: float = 1.0) -> np.ndarray:
    """Rows of RestEM's fine-tuning set: int64[N] indices into the inputs.

    A row is kept when ``reward >= threshold`` (official: 1.0) and fewer than
    ``max_per_problem`` rows of its problem were kept before it (the first ones in row order;
    official: 10, -1 = no limit). Output grouped by problem (order of first row), row order
    within a problem.
    """
    r, groups = _check(rewards, problem_index, max_per_problem, "max_per_problem")
    kept = []
    for rows in groups.values():
        correct = [i for i in rows if r[i] >= threshold]
        kept.extend(correct if max_per_problem == -1 else correct[:max_per_problem])
    return np.asarray(kept, dtype=np.int64)


def dpo_positive_pairs(rewards, problem_index, rng: np.random.Generator | np.random.RandomState,
                       max_pairs_per_problem: int = 64, threshold: float = 0.5) -> np.ndarray:
    """DPO+ preference pairs: int64[P, 2] rows ``(chosen, rejected)`` of indices into the inputs.

    Per problem: chosen = rows with ``reward >= threshold`` (official 0.5), rejected = the rest;
    a problem lacking either is skipped. The candidates are all chosen × rejected combinations
    (chosen-major, row order); when there are more than ``max_pairs_per_problem`` (official 64,
    -1 = no limit) a uniform subset of that size is drawn without replacement,
    ``rng.choice(n, k, replace=False)``, in the drawn order. ``rng`` is called only for such
    problems, in problem order; a ``np.random.RandomState(s)`` then reproduces the official draws
    after ``np.random.seed(s)``. Output grouped by problem (order of first row).
    """
    r, groups = _check(rewards, problem_index, max_pairs_per_problem, "max_pairs_per_problem")
    out = []
    for rows in groups.values():
        rows = np.asarray(rows, dtype=np.int64)
        good = r[rows] >= threshold
        chosen, rejected = rows[good], rows[~good]
        if len(chosen) == 0 or len(rejected) == 0:
            continue
        cand = np.stack(np.meshgrid(chosen, rejected, indexing="ij"), axis=-1).reshape(-1, 2)
        if max_pairs_per_problem != -1 and len(cand) > max_pairs_per_problem:
            cand = cand[rng.choice(len(cand), max_pairs_per_problem, replace=False)]
        out.append(cand)
    return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.int64)
