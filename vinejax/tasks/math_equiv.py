"""Equivalence of two MATH answers: fast string/number/structure checks first, sympy last.

``equivalence(predicted, gold)`` returns True or False when the fast paths decide, otherwise
the list of (predicted, gold) LaTeX pairs that must *all* be symbolically equal (checked by
``vinejax.tasks.symbolic`` in sandboxed worker processes). Nothing here evaluates the text.
"""
from __future__ import annotations

import re
from fractions import Fraction
from typing import Sequence, Union

from vinejax.tasks.math_answer import normalize

Verdict = Union[bool, list]
TOLERANCE = 1e-3
MAX_NESTING = 8  # tuples of tuples deeper than this are graded incorrect (bounded recursion)
_MATRIX = re.compile(r"^\\begin\{([pbvBV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}$", re.DOTALL)
_SCI = re.compile(r"^(-?\d+(?:\.\d+)?)(?:\\times|\\cdot|\*)10\^\{?(-?\d{1,3})\}?$")
_FRAC = re.compile(r"^(-?)\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}$")
_MIXED = re.compile(r"^(-?)(\d+)\\frac\{(\d+)\}\{(\d+)\}$")
_PLAIN = re.compile(r"^-?(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d{1,3})?$")
_IDENTIFIER = re.compile(r"^[a-zA-Z](?:_\{?\w+\}?)?$|^\\[a-zA-Z]+$")


def parse_number(text: str) -> Fraction | None:
    """The exact value of a plain numeric answer (int, decimal, 1.5e3, 1.5\\times10^{3},
    \\frac{a}{b}, mixed number 2\\frac{1}{2}), else None."""
    if len(text) > 60:
        return None
    text = text.strip("{}") if text.startswith("{") and text.endswith("}") else text
    try:
        if _PLAIN.match(text):
            return Fraction(text)
        if (match := _SCI.match(text)):
            return Fraction(match.group(1)) * Fraction(10) ** int(match.group(2))
        if (match := _FRAC.match(text)):
            sign = -1 if match.group(1) else 1
            return sign * Fraction(match.group(2)) / Fraction(match.group(3))
        if (match := _MIXED.match(text)):  # 2\frac{1}{2} is the mixed number 2.5
            sign = -1 if match.group(1) else 1
            return sign * (int(match.group(2)) + Fraction(int(match.group(3)), int(match.group(4))))
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return None


def decimal_places(text: str) -> int | None:
    """Digits after the point of a plain decimal such as ``0.333`` (a rounded value), else None."""
    text = text.strip("{}")
    match = re.fullmatch(r"-?\d*\.(\d+)", text)
    return len(match.group(1)) if match else None


def numbers_close(first: Fraction, second: Fraction, places: Sequence[int] = (),
                  tolerance: float = TOLERANCE) -> bool:
    """Exact values must be equal. When a side is a rounded decimal (``places`` digits after the
    point), it may differ by half a unit in its last digit and by at most ``tolerance``
    relatively: 0.333 matches 1/3, 0.3 does not, 4 never matches 8045/2012."""
    if first == second:
        return True
    if not places:
        return False
    difference = abs(first - second)
    rounding = Fraction(1, 2 * 10 ** min(places))
    return difference <= rounding and difference <= Fraction(tolerance) * max(abs(first), abs(second))


def split_top_level(text: str, separator: str = ",") -> list[str]:
    """Split at ``separator`` characters that are not inside (), [], {}."""
    parts, depth, current = [], 0, []
    for char in text:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        if char == separator and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _bracketed(text: str) -> tuple[str, str, str] | None:
    """(open, inner, close) when ``text`` is one bracketed group like (a,b] or \\{a,b\\}."""
    text = text.replace("\\{", "{").replace("\\}", "}")
    if len(text) >= 2 and text[0] in "([{" and text[-1] in ")]}":
        depth = 0
        for index, char in enumerate(text):
            depth += char in "([{"
            depth -= char in ")]}"
            if depth == 0 and index < len(text) - 1:
                return None  # e.g. "(1)(2)": not one group
        return text[0], text[1:-1], text[-1]
    return None


def _combine(verdicts: list) -> Verdict:
    pending = []
    for verdict in verdicts:
        if verdict is False:
            return False
        if verdict is not True:
            pending.extend(verdict)
    return pending or True


def _elementwise(first: list[str], second: list[str], percent: bool, depth: int) -> Verdict:
    if len(first) != len(second):
        return False
    return _combine([_compare(a, b, percent, depth + 1) for a, b in zip(first, second)])


def _matrix_cells(text: str) -> list[list[str]] | None:
    match = _MATRIX.match(text)
    if not match:
        return None
    rows = [row for row in match.group(2).split("\\\\") if row.strip()]
    return [row.split("&") for row in rows]


def _compare(a: str, b: str, percent: bool, depth: int = 0) -> Verdict:
    if a == b:
        return True
    if not a or not b or depth > MAX_NESTING:
        return False
    value_a, value_b = parse_number(a), parse_number(b)
    if value_a is not None and value_b is not None:
        places = [p for p in (decimal_places(a), decimal_places(b)) if p is not None]
        candidates = (value_a, value_a / 100, value_a * 100) if percent else (value_a,)
        return any(numbers_close(c, value_b, places) for c in candidates)
    cells_a, cells_b = _matrix_cells(a), _matrix_cells(b)
    if cells_a is not None or cells_b is not None:
        if cells_a is None or cells_b is None or len(cells_a) != len(cells_b):
            return False
        return _combine([_elementwise(r, s, percent, depth) for r, s in zip(cells_a, cells_b)])
    group_a, group_b = _bracketed(a), _bracketed(b)
    if group_a and group_b and ("," in group_a[1] or "," in group_b[1]):
        if (group_a[0], group_a[2]) != (group_b[0], group_b[2]):
            return False  # (1,2) vs [1,2]: different intervals
        return _elementwise(split_top_level(group_a[1]), split_top_level(group_b[1]), percent, depth)
    list_a, list_b = split_top_level(a), split_top_level(b)
    if len(list_a) > 1 or len(list_b) > 1:
        return _elementwise(list_a, list_b, percent, depth)
    if a.count("=") == 1 or b.count("=") == 1:
        return _compare_equations(a, b, percent, depth)
    if any(s.replace(" ", "").isalpha() and len(s) > 2 for s in (a, b)):
        return False  # words such as "Monday" or "odd": string equality only
    if re.search(r"\d_", a + b):
        return False  # numbers in a base ("12_7"): string equality only
    if ":" in a or ":" in b:
        return False  # ratios and clock times ("3:1", "5:30"): string equality only
    if re.search(r"\d\\frac", a + b):
        return False  # a mixed number with a non-numeric part: sympy would read it as a product
    if free_letters(a) != free_letters(b):
        return False  # e.g. "8n^2+4n+1" vs "144": different variables cannot be identically equal
    return [(a, b)]


def free_letters(latex: str) -> set[str]:
    """Single letters used as variables: letters outside ``\\commands`` (``\\pi``, ``\\sqrt`` ...)."""
    return set(re.findall(r"[a-zA-Z]", re.sub(r"\\[a-zA-Z]+", " ", latex)))


def _compare_equations(a: str, b: str, percent: bool, depth: int) -> Verdict:
    """``x = v`` against ``v`` (compare right-hand sides) or ``x = v`` against ``x = w``."""
    sides_a, sides_b = a.split("="), b.split("=")
    if len(sides_a) == 2 and len(sides_b) == 2:
        if sides_a[0] != sides_b[0]:
            return [(a, b)] if len(a) + len(b) < 200 else False
        return _compare(sides_a[1], sides_b[1], percent, depth + 1)
    if len(sides_a) == 2 and _IDENTIFIER.match(sides_a[0]) and len(sides_b) == 1:
        return _compare(sides_a[1], b, percent, depth + 1)
    if len(sides_b) == 2 and _IDENTIFIER.match(sides_b[0]) and len(sides_a) == 1:
        return _compare(a, sides_b[1], percent, depth + 1)
    return False


def equivalence(predicted: str, gold: str) -> Verdict:
    """True/False when decided by fast paths; else the pairs needing a symbolic check."""
    percent = "%" in predicted or "%" in gold
    return _compare(normalize(predicted), normalize(gold), percent)
