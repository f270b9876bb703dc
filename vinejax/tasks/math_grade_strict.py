"""The "strict" MATH grader: true mathematical equivalence of the final answer.

``extract_answer`` (math_answer) -> ``equivalence`` fast paths (math_equiv) -> symbolic check
in sandboxed, time-limited worker processes (symbolic) only when the fast paths cannot decide.
``grade_batch`` runs the fast paths for the whole batch first and sends only the undecided
pairs to ``num_workers`` symbolic workers in parallel. Compared with the "vineppo" grader it
does not guess percentages, handles commas on both sides, compares ordered lists in order and
only credits the last answer of the response; see ``math_equiv``.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from vinejax.tasks import symbolic
from vinejax.tasks.base import Problem, check_batch
from vinejax.tasks.math_answer import extract_answer, normalize
from vinejax.tasks.math_equiv import equivalence

MAX_RESPONSE_CHARS = 100_000  # longer responses are refused (graded 0)


def _predicted(response: str) -> str | None:
    return extract_answer(response) if len(response) <= MAX_RESPONSE_CHARS else None


def _verdict(predicted: str | None, answer: str):
    if not predicted or not predicted.strip():
        return False  # no answer, an empty \boxed{} or a refused response: never correct
    return equivalence(predicted, answer)


def answer(response: str, problem: Problem) -> str | None:
    """The final answer of ``response`` as a vote key (``math_answer.normalize`` of the extracted
    answer), or None when there is none, it is empty, or the response is refused (too long)."""
    del problem
    predicted = _predicted(response)
    if not predicted or not predicted.strip():
        return None
    return normalize(predicted)


_SYMBOLIC_CACHE: dict[tuple[str, str], bool] = {}
_CACHE_LIMIT = 200_000


def _symbolic_results(pairs: list, num_workers: int, timeout: float) -> dict:
    """Symbolic verdicts for ``pairs``, cached (MC rollouts repeat the same answers a lot).
    A timeout is cached as "not equal" too."""
    refused = {p: False for p in pairs if not (symbolic.admissible(p[0]) and symbolic.admissible(p[1]))}
    pairs = [p for p in pairs if p not in refused]  # only small pairs reach the workers / the cache
    missing = [p for p in pairs if p not in _SYMBOLIC_CACHE]
    if missing:
        pool = symbolic.get_pool(num_workers)
        pool.timeout = timeout
        if len(_SYMBOLIC_CACHE) + len(missing) > _CACHE_LIMIT:
            _SYMBOLIC_CACHE.clear()
        _SYMBOLIC_CACHE.update(zip(missing, pool.check_many(missing)))
    return {**refused, **{p: _SYMBOLIC_CACHE[p] for p in pairs}}


def clear_cache() -> None:
    """Forget cached symbolic verdicts (benchmarks use it to measure cold grading)."""
    _SYMBOLIC_CACHE.clear()


def grade(response: str, problem: Problem, timeout: float = symbolic.DEFAULT_TIMEOUT) -> float:
    """1.0 when the final answer of ``response`` is equivalent to ``problem.answer``, else 0.0."""
    verdict = _verdict(_predicted(response), problem.answer)
    if isinstance(verdict, bool):
        return float(verdict)
    return float(all(_symbolic_results(verdict, 1, timeout).values()))


def grade_batch(responses: Sequence[str], problems: Sequence[Problem], num_workers: int | None = None,
                timeout: float = symbolic.DEFAULT_TIMEOUT) -> np.ndarray:
    """Grade many pairs: fast paths in-process, undecided pairs on ``num_workers`` sympy workers
    (default: min(8, cpu count)). Not thread-safe: call it from one thread."""
    check_batch(responses, problems)
    return grade_answers([_predicted(r) for r in responses], [p.answer for p in problems], num_workers, timeout)


def grade_answers(predicted: Sequence[str | None], golds: Sequence[str], num_workers: int | None = None,
                  timeout: float = symbolic.DEFAULT_TIMEOUT) -> np.ndarray:
    """f32 1.0 where an already extracted answer (None: none) is equivalent to its gold answer:
    fast paths in-process, undecided pairs on ``num_workers`` sympy workers."""
    verdicts = [_verdict(a, gold) for a, gold in zip(predicted, golds)]
    pending = sorted({pair for v in verdicts if not isinstance(v, bool) for pair in v})
    workers = num_workers or min(8, os.cpu_count() or 1)
    decided = _symbolic_results(pending, workers, timeout) if pending else {}
    rewards = [v if isinstance(v, bool) else all(decided[p] for p in v) for v in verdicts]
    return np.asarray(rewards, dtype=np.float32)
