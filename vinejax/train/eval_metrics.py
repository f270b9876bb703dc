"""Evaluation metrics as pure functions of graded samples: unbiased pass@k, the official
majority vote, and their averages over problems.

The official analysis (VinePPO's `tasks/math.py` / `tasks/gsm8k.py` `evaluate_predictions`)
scores each problem from its n samples, then averages over problems: `correct_frac` (our
`accuracy`), `once_hit` (= pass@n), `majority_vote_acc` (our `maj@n`), `unique_answer_count`
and `none_answer_extracted_frac_per_problem` (our `no_answer_frac`). pass@k for k < n is the
unbiased estimator of Chen et al. (2021), not best-of-k on a subset of the samples.
"""
from __future__ import annotations

import math
from typing import Hashable, Sequence

import numpy as np

PASS_KS = (1, 4, 8, 16)  # the k of pass@k reported (those <= n), plus n itself


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of a problem with `c` correct among `n` samples: the probability that k
    samples drawn without replacement from the n hold at least one correct one,
    1 − C(n−c, k) / C(n, k)."""
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n = {n} samples")
    if not 0 <= c <= n:
        raise ValueError(f"{c} correct samples out of {n}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_ks(n: int) -> tuple[int, ...]:
    """The k of pass@k reported for n samples: `PASS_KS` up to n, and n."""
    return tuple(sorted({k for k in PASS_KS if k <= n} | ({n} if n > 0 else set())))


def majority_index(answers: Sequence[Hashable]) -> int:
    """Index of the sample the majority vote picks: the first sample carrying the most common
    answer (ties go to the answer seen first; None is a candidate like any other), as the
    official `Counter(answers).most_common(1)` then `answers.index(...)`."""
    if not answers:
        raise ValueError("a majority vote needs at least one answer")
    counts: dict = {}
    first: dict = {}
    for i, answer in enumerate(answers):
        counts[answer] = counts.get(answer, 0) + 1
        first.setdefault(answer, i)
    winner = max(counts, key=counts.get)  # dicts keep first-seen order; max keeps the first of a tie
    return first[winner]


def majority_vote(answers: Sequence[Hashable], verdicts: Sequence[float]) -> float:
    """1.0 when the majority answer is correct (the verdict of the sample `majority_index` picks)."""
    if len(answers) != len(verdicts):
        raise ValueError(f"{len(answers)} answers but {len(verdicts)} verdicts")
    return float(verdicts[majority_index(answers)])


def summarize(verdicts: np.ndarray, answers: Sequence[Sequence[Hashable]] | None, lengths: np.ndarray,
              finished: np.ndarray) -> dict:
    """Metrics of P problems with n samples each, averaged over problems.

    verdicts f32[P, n] (1 correct, 0 not), answers P lists of n extracted answers (None: no
    majority vote), lengths int[P, n] response tokens, finished bool[P, n] (not stopped by the
    length budget). Keys: accuracy, pass@k (k in `pass_ks(n)`), maj@n, no_answer_frac,
    unique_answers, length_mean, unfinished_frac.
    """
    verdicts = np.asarray(verdicts, np.float64)
    num_problems, n = verdicts.shape
    correct = verdicts.sum(axis=1).round().astype(int)  # [P]
    out = {"accuracy": float(verdicts.mean())}
    for k in pass_ks(n):
        out[f"pass@{k}"] = float(np.mean([pass_at_k(n, int(c), k) for c in correct]))
    if answers is not None:
        if len(answers) != num_problems:
            raise ValueError(f"{len(answers)} answer lists for {num_problems} problems")
        out[f"maj@{n}"] = float(np.mean([majority_vote(a, v) for a, v in zip(answers, verdicts)]))
        out["no_answer_frac"] = float(np.mean([sum(x is None for x in a) / n for a in answers]))
        out["unique_answers"] = float(np.mean([len(set(a)) for a in answers]))
    out["length_mean"] = float(np.mean(lengths))
    out["unfinished_frac"] = float(1.0 - np.mean(finished))
    return out
