"""LaTeX-aware splitting of a MATH solution into reasoning steps (VINEPPO.md section 3).

Rules, in order:
1. Find math regions: inline ``$..$``, ``\\(..\\)``; display ``$$..$$``, ``\\[..\\]``,
   ``\\begin{env}..\\end{env}``, ``[asy]..[/asy]``. Never cut inside inline math by rules 2-4.
2. Cut before every newline outside inline math (inside display math this splits align rows).
3. Cut at sentence ends outside math: ``.`` followed by whitespace and a capital letter, unless
   the word before the period is a short abbreviation (``e.g``, ``Mr``, a single letter ...).
4. Cut after math that ends a sentence: ``.$``, ``.$$``, ``.\\)``, ``.\\]``.
5. Merge: a part that is blank, or shorter than 20 characters (stripped) and not ending with
   ``.``, is merged into the next part (the last part into the previous one).
6. A part longer than 100 characters is broken recursively near its middle: after ", ", " and ",
   ":", " to " outside math (both halves >= 40 characters), else after ",", "=", "\\equiv", "+"
   inside math (both halves >= 20).
Whitespace separating two steps starts the later step, so ``"".join(steps) == text``.
"""
from __future__ import annotations

import re

TEXT, INLINE, DISPLAY = 0, 1, 2
MIN_PART = 20
MAX_PART = 100
_ABBREVIATIONS = {"e.g", "i.e", "mr", "mrs", "ms", "dr", "st", "vs", "etc", "no", "fig", "eq"}
_TEXT_SEPARATORS = (", ", " and ", ":", " to ")
_MATH_SEPARATORS = (",", "=", "\\equiv", "+")
_BEGIN = re.compile(r"\\begin\{([^{}]{1,30})\}")


def math_mask(text: str) -> list[int]:
    """Per character: TEXT, INLINE (``$..$``, ``\\(..\\)``) or DISPLAY math; unclosed runs to the end."""
    mask = [TEXT] * len(text)
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text) and text[index + 1] == "$":
            index += 2
            continue
        opener, closer, kind = None, None, None
        if text.startswith("$$", index):
            opener, closer, kind = "$$", "$$", DISPLAY
        elif char == "$":
            opener, closer, kind = "$", "$", INLINE
        elif text.startswith("\\[", index):
            opener, closer, kind = "\\[", "\\]", DISPLAY
        elif text.startswith("\\(", index):
            opener, closer, kind = "\\(", "\\)", INLINE
        elif text.startswith("[asy]", index):
            opener, closer, kind = "[asy]", "[/asy]", DISPLAY
        elif text.startswith("\\begin{", index):
            match = _BEGIN.match(text, index)
            if match:
                opener, closer, kind = match.group(0), "\\end{%s}" % match.group(1), DISPLAY
        if opener is None:
            index += 1
            continue
        end = _find_closer(text, closer, index + len(opener))
        end = len(text) if end < 0 else end + len(closer)
        for position in range(index, end):
            mask[position] = kind
        index = end
    return mask


def _find_closer(text: str, closer: str, start: int) -> int:
    position = text.find(closer, start)
    while closer == "$" and position > 0 and text[position - 1] == "\\":
        position = text.find(closer, position + 1)
    return position


def _is_abbreviation(text: str, period: int) -> bool:
    match = re.search(r"([A-Za-z.]+)$", text[max(0, period - 6):period])
    if not match:
        return False
    word = match.group(1).lower()
    return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha() and word.isupper())


def _cut_positions(text: str, mask: list[int]) -> set[int]:
    cuts = set()
    for index, char in enumerate(text):
        if char == "\n" and mask[index] != INLINE and index > 0:
            cuts.add(index)
    for match in re.finditer(r"\.(?=[ \t]+[A-Z])", text):
        if mask[match.start()] == TEXT and not _is_abbreviation(text, match.start()):
            cuts.add(match.end())
    for match in re.finditer(r"\.(\$\$|\$|\\\)|\\\])", text):
        end = match.end()
        if mask[match.start()] != TEXT and (end == len(text) or mask[end] == TEXT):
            cuts.add(end)
    return {c for c in cuts if 0 < c < len(text)}


def _merge_short(parts: list[str]) -> list[str]:
    merged: list[str] = []
    carry = ""
    for part in parts:
        part = carry + part
        stripped = part.strip()
        if not stripped or (len(stripped) < MIN_PART and not stripped.endswith(".")):
            carry = part
            continue
        merged.append(part)
        carry = ""
    if carry:
        if merged:
            merged[-1] += carry
        else:
            merged.append(carry)
    return merged


def _best_break(part: str, mask: list[int]) -> int | None:
    middle = len(part) / 2
    for separators, kind, minimum in ((_TEXT_SEPARATORS, TEXT, 40), (_MATH_SEPARATORS, None, 20)):
        best = None
        for separator in separators:
            start = part.find(separator)
            while start >= 0:
                cut = start + len(separator.rstrip(" ")) if separator.endswith(" ") else start + len(separator)
                in_kind = mask[start] == TEXT if kind == TEXT else mask[start] != TEXT
                if in_kind and cut >= minimum and len(part) - cut >= minimum:
                    if best is None or abs(cut - middle) < abs(best - middle):
                        best = cut
                start = part.find(separator, start + 1)
        if best is not None:
            return best
    return None


def _break_long(part: str, mask: list[int]) -> list[str]:
    if len(part.strip()) <= MAX_PART:
        return [part]
    cut = _best_break(part, mask)
    if cut is None:
        return [part]
    return _break_long(part[:cut], mask[:cut]) + _break_long(part[cut:], mask[cut:])


def split_steps(text: str) -> list[str]:
    """Split a MATH solution into steps (module docstring); ``"".join(steps) == text``."""
    if not text:
        return []
    mask = math_mask(text)
    bounds = [0] + sorted(_cut_positions(text, mask)) + [len(text)]
    parts = [text[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    steps = []
    offset = 0
    for part in _merge_short(parts):
        steps.extend(_break_long(part, mask[offset:offset + len(part)]))
        offset += len(part)
    return steps
