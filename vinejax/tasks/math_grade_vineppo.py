"""The "vineppo" MATH grader: the verdicts of VinePPO's official reward, computed safely.

The official reward (``MATHRewardFunction`` + the Minerva grader ``eval_math``) reads a list of
answers from the response and from the gold *solution* (``math_vineppo_answer``), and matches
the lists (``math_vineppo_equal``): last ``len(gold)`` boxes as a set, comma splitting, the
official normalisation, 1e-3 numeric tolerance, percent variants, symbolic equivalence. Its
symbolic step evaluates answer text with sympy's ``parse_expr``; here that step
(``math_vineppo_symbolic``) reads the text with our own parser and runs in the sandboxed,
time-limited workers of ``vinejax.tasks.symbolic``.

Bounds: a response over ``MAX_RESPONSE_CHARS`` or with an answer over
``math_vineppo_answer.MAX_ANSWER_CHARS`` is refused (0); one grade makes at most
``MAX_SYMBOLIC_CHECKS`` symbolic checks (further ones count as unequal), each cut at ``timeout``
seconds, so a grade takes at most about ``MAX_SYMBOLIC_CHECKS * timeout`` seconds of worker time. ``grade_batch`` grades the batch in
rounds: the string work of every response runs in-process, and the symbolic checks a round
needs go to ``num_workers`` workers at once (cached across calls).
"""
from __future__ import annotations

import functools
import os
from typing import Sequence

import numpy as np

from vinejax.tasks import symbolic
from vinejax.tasks.base import Problem, check_batch
from vinejax.tasks.math_vineppo_answer import answer_list
from vinejax.tasks.math_vineppo_equal import lists_match
from vinejax.tasks.math_vineppo_symbolic import prepare

MAX_RESPONSE_CHARS = 100_000
MAX_SYMBOLIC_CHECKS = 16
MAX_ROUNDS = 8
_CACHE_LIMIT = 200_000
_SYMBOLIC_CACHE: dict[tuple[str, str], bool] = {}  # (predicted, gold) LaTeX -> verdict


@functools.lru_cache(maxsize=4096)
def gold_answers(problem_text: str, solution: str) -> tuple:
    """The official gold answer list of a problem, read from its gold solution."""
    return tuple(answer_list(problem_text, solution))


def predicted_answers(response: str, problem: Problem) -> list | None:
    """The official answer list of a response, or None when the response is refused (too long)."""
    if len(response) > MAX_RESPONSE_CHARS:
        return None
    return answer_list(problem.problem, response)


def answer(response: str, problem: Problem) -> tuple | None:
    """The official extracted answer as a vote candidate: the response's answer list as a tuple
    (``()`` when nothing is found), None for a refused (too long) response."""
    predicted = predicted_answers(response, problem)
    return None if predicted is None else tuple(predicted)


class _Oracle:
    """The symbolic check for one grade: cached verdicts; a pair not yet checked is noted in
    ``missing`` (with its prepared job) and answered False for this round."""

    def __init__(self, known: dict):
        self.known, self.missing, self.asked = known, {}, set()

    def __call__(self, a: str, b: str) -> bool:
        key = (a, b)
        self.asked.add(key)
        if len(self.asked) > MAX_SYMBOLIC_CHECKS and key not in self.known:
            return False
        if key in self.known:
            return self.known[key]
        job = prepare(a, b)
        if job is None:  # decided without sympy: the official check is sure to fail
            self.known[key] = False
            return False
        self.missing[key] = job
        return False


def _resolve(jobs: dict, num_workers: int, timeout: float) -> None:
    """Run the symbolic ``jobs`` ({key: prepared job}) in the workers; store the verdicts."""
    pool = symbolic.get_pool(num_workers)
    pool.timeout = timeout
    keys = list(jobs)
    if len(_SYMBOLIC_CACHE) + len(keys) > _CACHE_LIMIT:
        _SYMBOLIC_CACHE.clear()
    _SYMBOLIC_CACHE.update(zip(keys, pool.check_many([jobs[k] for k in keys], check="vineppo")))


def clear_cache() -> None:
    """Forget cached symbolic verdicts (benchmarks use it to measure cold grading)."""
    _SYMBOLIC_CACHE.clear()


def grade_batch(responses: Sequence[str], problems: Sequence[Problem], num_workers: int | None = None,
                timeout: float = symbolic.DEFAULT_TIMEOUT) -> np.ndarray:
    """The official reward of each (response, problem) pair as float32 1.0/0.0; symbolic checks
    run on ``num_workers`` workers (default min(8, cpu count)). Call it from one thread."""
    check_batch(responses, problems)
    workers = num_workers or min(8, os.cpu_count() or 1)
    lists = [(predicted_answers(r, p), list(gold_answers(p.problem, p.solution)))
             for r, p in zip(responses, problems)]
    rewards = np.zeros(len(lists), np.float32)
    pending = [i for i, (predicted, _) in enumerate(lists) if predicted is not None]
    for round_index in range(MAX_ROUNDS + 1):
        jobs, undecided = {}, []
        for i in pending:
            oracle = _Oracle(_SYMBOLIC_CACHE)
            verdict = lists_match(lists[i][0], lists[i][1], oracle)
            if oracle.missing and round_index < MAX_ROUNDS:
                jobs.update(oracle.missing)
                undecided.append(i)
            else:
                rewards[i] = float(verdict)
        if not undecided:
            break
        _resolve(jobs, workers, timeout)
        pending = undecided
    return rewards


def grade(response: str, problem: Problem, timeout: float = symbolic.DEFAULT_TIMEOUT) -> float:
    """The official reward (1.0 or 0.0) of ``response`` to ``problem``."""
    return float(grade_batch([response], [problem], num_workers=1, timeout=timeout)[0])
