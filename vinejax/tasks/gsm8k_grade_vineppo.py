"""The "vineppo" GSM8K grader: the verdicts of VinePPO's official reward.

Official rule (``GSM8K`` task with ``use_original_format: true``): the prediction is the text
after the last ``####`` (no ``####``: unfinished, reward 0), stripped, with its commas removed
and lower-cased; it must equal the gold answer (the text after the ``####`` of the gold
solution), stripped and lower-cased. Nothing else is forgiven: ``$18``, ``18.00``, ``18.``,
``18 dollars`` all score 0.

Official quirk, reproduced: commas are removed from the prediction only, so a gold answer
written with a thousands separator (``1,000``; 14 of the 1,319 GSM8K test problems) can never be
earned. Use the "strict" grader for value equality.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from vinejax.tasks.base import Problem, grade_serially
from vinejax.tasks.gsm8k import extract_answer

MAX_RESPONSE_CHARS = 100_000  # longer responses are refused (graded 0)


def answer(response: str, problem: Problem) -> str | None:
    """The official extracted answer (the majority vote's candidate): the text after the last
    ``####``, stripped, as written (``1,000`` and ``1000`` are different candidates); None without
    ``####`` or for a refused (too long) response."""
    del problem
    if len(response) > MAX_RESPONSE_CHARS:
        return None
    return extract_answer(response)


def grade(response: str, problem: Problem) -> float:
    """1.0 when the text after the last ``####`` of ``response`` matches ``problem.answer``."""
    predicted = answer(response, problem)
    if predicted is None:
        return 0.0
    return float(predicted.replace(",", "").lower() == problem.answer.strip().lower())


def grade_batch(responses: Sequence[str], problems: Sequence[Problem], num_workers: int | None = None) -> np.ndarray:
    """Grade many pairs; this is cheap string work, so ``num_workers`` is ignored."""
    del num_workers
    return grade_serially(grade, responses, problems)
