"""The "strict" GSM8K grader: the number after the last ``####`` has the gold value.

Prediction and gold are compared after removing commas and whitespace and lower-casing; they
are equal when the strings match or both read as the same finite number (``1,000`` = ``1000``
= ``1000.00``). Unlike the official reward, a gold answer with a thousands separator can be
earned.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np

from vinejax.tasks.base import Problem, grade_serially
from vinejax.tasks.gsm8k import extract_answer

MAX_RESPONSE_CHARS = 100_000  # longer responses are refused (graded 0)


def _canonical(text: str) -> str:
    return re.sub(r"\s+", "", text.replace(",", "")).lower()


def as_number(text: str) -> float | None:
    """The finite number `text` reads as (100 characters at most), else None."""
    if len(text) > 100:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def answers_equal(predicted: str, gold: str) -> bool:
    """Equal as canonical strings or as finite numbers (module docstring)."""
    predicted, gold = _canonical(predicted), _canonical(gold)
    if gold.startswith("####"):
        gold = gold[4:]
    if predicted == gold and predicted:
        return True
    predicted_value, gold_value = as_number(predicted), as_number(gold)
    if predicted_value is None or gold_value is None:
        return False
    return abs(predicted_value - gold_value) <= 1e-9 * max(1.0, abs(gold_value))


def answer(response: str, problem: Problem) -> str | None:
    """The answer after the last ``####`` as a vote key: equal values give equal keys (commas,
    whitespace and case dropped; a finite number written in its shortest form, ``1,000.00`` ->
    ``1000``); None without ``####`` or for a refused (too long) response."""
    del problem
    predicted = extract_answer(response) if len(response) <= MAX_RESPONSE_CHARS else None
    if predicted is None:
        return None
    text = _canonical(predicted)
    value = as_number(text)
    if value is None:
        return text
    return str(int(value)) if value.is_integer() else repr(value)


def grade(response: str, problem: Problem) -> float:
    """1.0 when the answer after the last ``####`` of ``response`` equals ``problem.answer``."""
    if len(response) > MAX_RESPONSE_CHARS:
        return 0.0
    predicted = extract_answer(response)
    return float(predicted is not None and answers_equal(predicted, problem.answer))


def grade_batch(responses: Sequence[str], problems: Sequence[Problem], num_workers: int | None = None) -> np.ndarray:
    """Grade many pairs; this is cheap string work, so ``num_workers`` is ignored."""
    del num_workers
    return grade_serially(grade, responses, problems)
