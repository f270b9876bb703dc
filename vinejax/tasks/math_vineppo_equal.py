"""Comparing MATH answer lists as the official VinePPO reward does (the "vineppo" grader).

``lists_match(predicted, gold, symbolic)`` reproduces the official verdict (``eval_math``):

- duplicates are dropped from both lists (first occurrence kept) and only the last
  ``len(gold)`` predicted answers are kept (all of them when the gold list is empty);
- every predicted answer must equal some gold answer and every gold answer some predicted one;
- two answers are equal (``answers_equal``) when both contain ``\\cup`` and their pieces match
  as lists; or both read as floats (commas removed) within 1e-3; or they are the same non-empty
  string; or ``values_equal`` says so;
- ``values_equal``: identical strings; both plain numbers (commas removed, ``%`` divides by 100)
  -> the gold value, or it times 100 or over 100, within 1e-3 (``math.isclose``); an empty
  prediction never; both starting with ``(``/``[`` and closing later -> the pieces between the
  first and last characters, split at commas, pairwise equal; two ``pmatrix``/``bmatrix`` of the
  same shape -> cell by cell; ``a = b`` on both sides -> ``a - (b)`` symbolically equal up to
  sign; ``x = v`` (a name of at most 2 characters) against a value -> ``v`` against the value;
  and last, the symbolic check on the whole answers.

The symbolic check is a callable ``symbolic(a, b) -> bool`` supplied by the caller (it runs in
sandboxed worker processes, see ``math_vineppo_symbolic``). Nothing here evaluates text.
"""
from __future__ import annotations

import math
import re
from typing import Callable

Symbolic = Callable[[str, str], bool]
TOLERANCE = 1e-3
MAX_NESTING = 20  # deeper recursion (tuples in tuples ...) counts as unequal
_BRACKETED = re.compile(r"(\(|\[).+(\)|\])")
_MATRIX_BEGIN = ("\\begin{pmatrix}", "\\begin{bmatrix}")
_MATRIX_END = ("\\end{pmatrix}", "\\end{bmatrix}")


def as_float(text: str) -> float | None:
    """``float(text)`` (Python's reading of a number: ``1e3``, `` 5``, ``inf``...), else None."""
    try:
        return float(text)
    except (ValueError, OverflowError):
        return None


def plain_number(text: str) -> float | None:
    """The official ``parse_digits``: a float after removing commas, or ``N%`` / ``N\\%`` as N/100."""
    text = text.replace(",", "")
    value = as_float(text)
    if value is not None or not text.endswith("%"):
        return value
    text = text[:-1]
    if text.endswith("\\"):
        text = text[:-1]
    value = as_float(text)
    return None if value is None else value / 100


def lists_match(predicted: list, gold: list, symbolic: Symbolic) -> bool:
    """The official verdict for a predicted answer list against a gold answer list."""
    if any(answer is None for answer in predicted + gold):
        return False  # an oversized answer is refused
    gold = _unique(gold)
    predicted = _unique(predicted)[-len(gold):]
    return _sets_match(predicted, gold, symbolic, 0)


def _unique(items: list) -> list:
    out = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def _sets_match(predicted: list, gold: list, symbolic: Symbolic, depth: int) -> bool:
    matched_predicted, matched_gold = set(), set()
    for i, p in enumerate(predicted):
        for j, g in enumerate(gold):
            if i in matched_predicted and j in matched_gold:
                continue  # the verdict of this pair cannot change the result
            if answers_equal(p, g, symbolic, depth + 1):
                matched_predicted.add(i)
                matched_gold.add(j)
    return len(matched_predicted) == len(predicted) and len(matched_gold) == len(gold)


def answers_equal(predicted: str, gold: str, symbolic: Symbolic, depth: int = 0) -> bool:
    """One predicted answer against one gold answer (official ``is_correct`` on two strings)."""
    if depth > MAX_NESTING:
        return False
    if "\\cup" in predicted and "\\cup" in gold:
        return _sets_match(predicted.split("\\cup"), gold.split("\\cup"), symbolic, depth)
    first, second = as_float(predicted.replace(",", "")), as_float(gold.replace(",", ""))
    if first is not None and second is not None and abs(first - second) < TOLERANCE:
        return True
    if gold and predicted == gold:
        return True
    return values_equal(predicted, gold, symbolic, depth)


def values_equal(prediction: str, reference: str, symbolic: Symbolic, depth: int = 0) -> bool:
    """The official ``math_equal`` (see the module docstring)."""
    if prediction == reference:
        return True
    if depth > MAX_NESTING:
        return False
    predicted_value, reference_value = plain_number(prediction), plain_number(reference)
    if predicted_value is not None and reference_value is not None:
        candidates = (reference_value / 100, reference_value, reference_value * 100)
        return any(math.isclose(c, predicted_value, abs_tol=TOLERANCE) for c in candidates)
    if not prediction:
        return False
    reference, prediction = reference.strip(), prediction.strip()
    if _BRACKETED.match(prediction) and _BRACKETED.match(reference):
        if _all_equal(prediction[1:-1].split(","), reference[1:-1].split(","), symbolic, depth):
            return True
    if _matrices_equal(prediction, reference, symbolic, depth):
        return True
    if _equations_equal(prediction, reference, symbolic, depth):
        return True
    return symbolic(prediction, reference)


def _all_equal(first: list, second: list, symbolic: Symbolic, depth: int) -> bool:
    return len(first) == len(second) and all(
        values_equal(a, b, symbolic, depth + 1) for a, b in zip(first, second))


def _matrix_rows(text: str) -> list[list[str]] | None:
    if not (text.startswith(_MATRIX_BEGIN) and text.endswith(_MATRIX_END)):
        return None
    body = text[len(_MATRIX_BEGIN[0]) : -len(_MATRIX_END[0])]
    return [line.strip().split("&") for line in body.split("\\\\") if line.strip()]


def _matrices_equal(prediction: str, reference: str, symbolic: Symbolic, depth: int) -> bool:
    rows_p, rows_r = _matrix_rows(prediction), _matrix_rows(reference)
    if rows_p is None or rows_r is None or len(rows_p) != len(rows_r):
        return False
    return all(_all_equal(p, r, symbolic, depth) for p, r in zip(rows_p, rows_r))


def _equations_equal(prediction: str, reference: str, symbolic: Symbolic, depth: int) -> bool:
    """``a=b`` vs ``c=d``: ``a - (b)`` vs ``c - (d)`` up to sign; ``x=v`` vs ``w``: ``v`` vs ``w``."""
    if prediction.count("=") == 1 and reference.count("=") == 1:
        pred = "{} - ({})".format(*(side.strip() for side in prediction.split("=")))
        ref = "{} - ({})".format(*(side.strip() for side in reference.split("=")))
        return symbolic(pred, ref) or symbolic(f"-({pred})", ref)
    if prediction.count("=") == 1 and len(prediction.split("=")[0].strip()) <= 2 and "=" not in reference:
        return values_equal(prediction.split("=")[1], reference, symbolic, depth + 1)
    if reference.count("=") == 1 and len(reference.split("=")[0].strip()) <= 2 and "=" not in prediction:
        return values_equal(prediction, reference.split("=")[1], symbolic, depth + 1)
    return False
