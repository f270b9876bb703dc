"""The official VinePPO symbolic check of two MATH answers, without evaluating any text.

Official rule (``symbolic_equal`` of the Minerva grader): turn both LaTeX answers into plain
text (``latex_text``; ``\\dfrac``/``\\tfrac`` -> ``\\frac`` and a space before each ``\\frac``
first), refuse texts that ``eval_allowed`` rejects, then the answers are equal when

1. ``(a)-(b)`` (a digit, spaces, a digit -> ``+``: mixed numbers; then spaces removed) reads
   as an expression (implicit multiplication) that ``sympy.simplify`` turns into 0; or
2. ``a`` and ``b`` each read as a plain expression (no implicit multiplication) whose numeric
   values are within 1e-3 (``math.isclose(..., abs_tol=1e-3)``).

``prepare`` does the string work in the calling process; ``texts_equal`` does the sympy work
and runs in the sandboxed, time-limited workers of ``vinejax.tasks.symbolic``.
"""
from __future__ import annotations

import math
import re

from vinejax.tasks.latex_text import LatexError, latex_to_text

TOLERANCE = 1e-3
MAX_TEXT_CHARS = 300  # longer answer texts are not attempted (counted unequal)
_KNOWN_WORDS = ("sqrt", "frac", "pi", "inf", "cos", "sin", "tan", "cot", "arccos", "arcsin",
                "arctan", "arccot", "log", "ln", "exp")
_REFUSED_SUBSTRINGS = ("^{", "^(")
_REFUSED_PATTERNS = [re.compile(p) for p in (r"\^[0-9]+\^", r"\^-?[0-9][0-9]+", r"\*\*[0-9]+\*\*",
                                             r"\*\*-?[0-9][0-9]+", r"[0-9][0-9][0-9]+!")]


def official_text(latex: str) -> str:
    """The plain text the official grader makes of a LaTeX answer."""
    latex = latex.replace("\\tfrac", "\\frac").replace("\\dfrac", "\\frac").replace("\\frac", " \\frac")
    return latex_to_text(latex)


def eval_allowed(text: str) -> bool:
    """The official ``should_allow_eval``: at most 2 distinct letters outside known words, no
    ``^{``/``^(``, no stacked or multi-digit exponents, no factorial of a 3-digit number."""
    letters = text
    for word in _KNOWN_WORDS:
        letters = letters.replace(word, "")
    if len({char for char in letters if char.isalpha()}) > 2:
        return False
    if any(bad in text for bad in _REFUSED_SUBSTRINGS):
        return False
    return not any(pattern.search(text) for pattern in _REFUSED_PATTERNS)


def prepare(a_latex: str, b_latex: str) -> tuple[str, str, str] | None:
    """(difference text, a text, b text) for ``texts_equal``, or None when the official check
    is sure to answer "unequal" (conversion fails, a text is refused or too long)."""
    try:
        a, b = official_text(a_latex), official_text(b_latex)
    except LatexError:
        return None
    if len(a) > MAX_TEXT_CHARS or len(b) > MAX_TEXT_CHARS or not (eval_allowed(a) and eval_allowed(b)):
        return None
    difference = re.sub("([0-9]) +([0-9])", "\\1+\\2", f"({a})-({b})").replace(" ", "")
    return difference, a, b


def _is_zero(value) -> bool:
    """``value == 0`` as sympy 1.12 answered it (a Float 0.0 counts as zero)."""
    return bool(getattr(value, "is_Number", False) and value == 0) or (
        getattr(value, "is_Float", False) and float(value) == 0.0)


def texts_equal(difference: str, a: str, b: str) -> bool:
    """Rules 1 and 2 of the module docstring (run it in a worker: sympy work is unbounded)."""
    import sympy

    from vinejax.tasks.text_expr import parse

    try:
        if _is_zero(sympy.simplify(parse(difference, implicit=True))):
            return True
    except Exception:  # noqa: BLE001  (any failure of the check means "not shown equal")
        pass
    try:
        first = float(parse(a, implicit=False).evalf())
        second = float(parse(b, implicit=False).evalf())
    except Exception:  # noqa: BLE001
        return False
    return math.isclose(first, second, abs_tol=TOLERANCE)
