"""Split a MATH response into reasoning steps the way VinePPO's RL does (its "in-place" splitter).

The RL text is the model's whole response (for the SFT model: ``"\\n" + solution + "\\n"``),
split as is: nothing is stripped and ``"".join(steps) == response``. Stages, in order:

1. Mask math. These regions, found in this order on the text left unmasked so far, each become
   one opaque block that counts as ``MASK_WIDTH`` (60) characters in stages 2 and 6:
   ``[asy]..[/asy]``; ``$\\begin{tabular}..\\end{tabular}$``; ``\\begin{tabular}..\\end{tabular}``;
   ``\\(..\\)``; ``\\[..\\]``; ``$$..$$``; ``$..$`` (not after a backslash, at least one character
   inside, the closing ``$`` not after a backslash nor before another ``$``); and
   ``\\begin{env}..\\end{env}``. All are shortest matches and may span lines. A region that would
   contain an already masked block (nested math) makes the official splitter fail:
   ``StepSplitError``.
2. Cut the masked text at sentence ends (a ``.`` followed by whitespace and a capital letter,
   unless the ``.`` ends a one-letter word or a two-letter word after whitespace) and before
   every newline. Then, left to right, a piece shorter than 20 (masked) characters that does not
   end with ``.`` absorbs the next piece; the last piece never absorbs.
3. Cut after every math block whose text ends with ``.$``, ``.$$``, ``.\\)`` or ``.\\]``. Then a
   part shorter than 20 real characters that does not end with one of those absorbs the next
   part; such a part at the end joins the previous one.
4. Cut before every newline inside a math block (only at the first of identical blocks in a
   part). Then a part shorter than 3 characters, or one that is only an opening delimiter
   (``$``, ``$$``, ``\\(``, ``\\[``, ``\\begin{..}``, ``[asy]``, surrounding whitespace aside),
   absorbs the next part; at the end it joins the previous one.
5. A part longer than ``MAX_STEP_CHARS`` (100) is broken again and again: first in prose
   (stage 6), unless its start lies in the "math range" (below), then in math (stage 7); the
   first half is examined again after each cut, and a part that no rule breaks is kept.
6. Prose break: on the part with its math masked afresh, the separators ``,``, ``" and "``,
   ``:``, ``" to "`` are tried in this order; for a separator, the cut nearest the middle of the
   masked part (after the comma/colon, before the space after "and"/"to"; the leftmost on a tie)
   is used when both halves have at least 40 real characters, else the next separator is tried.
7. Math break: the same on the raw part with ``,$``, ``,\\)``, ``,\\]``, ``=``, ``\\equiv``,
   ``+``, ``\\cancelto`` (cut after each), halves of at least 20 characters. The "math range"
   is the official bookkeeping of math cuts: from the smallest cut offset to the largest broken
   length, both measured within the broken piece but compared with offsets in the whole part.

When a stage leaves no part at all (a response of fewer than 20 characters, roughly, that does
not end like a sentence in math) the official splitter fails too: ``StepSplitError``. The RL
code drops such episodes, as VinePPO does (episode generator: "parse_failed" -> skipped).
"""
from __future__ import annotations

import bisect
import re

from vinejax.tasks.base import StepSplitError

MASK_WIDTH = 60  # length of the official placeholder that stands for a math region
MAX_STEP_CHARS = 100
MIN_NAIVE_PIECE = 20
MIN_TAIL_PART = 20
MIN_ROW_PART = 3
MIN_PROSE_HALF = 40
MIN_MATH_HALF = 20
_STAND_IN = "\ufffc" * MASK_WIDTH  # neither a word character, a space, "." nor a delimiter

_MATH_REGIONS = [re.compile(pattern, re.DOTALL) for pattern in (
    r"\[asy\].*?\[/asy\]",
    r"\$\\begin\{tabular\}.*?\\end\{tabular\}\$",
    r"\\begin\{tabular\}.*?\\end\{tabular\}",
    r"\\\(.*?\\\)",
    r"\\\[.*?\\\]",
    r"\$\$.*?\$\$",
    r"(?<!\\)\$.*?[^\\]\$(?!\$)",
    r"\\begin\{([^}]*)\}.*?\\end\{\1\}",
)]
_SENTENCE_BREAK = re.compile(r"(?<=\.)(?<!\b[A-Za-z]\.)(?<!\s[A-Za-z]{2}\.)(?=\s+[A-Z])")
_TAIL_ENDINGS = (".$", ".$$", ".\\)", ".\\]")
_LONE_OPENER = re.compile(r"\$|\$\$|\\\(|\\\[|\\begin\{[^}]*\}|\[asy\]")
# (separator, characters from the end of its match back to the cut)
_PROSE_SEPARATORS = [(re.compile(p), back) for p, back in ((",", 0), (r"\sand\s", 1), (":", 0), (r"\sto\s", 1))]
_MATH_SEPARATORS = [re.compile(re.escape(s)) for s in (",$", ",\\)", ",\\]", "=", "\\equiv", "+", "\\cancelto")]


class Masked:
    """``text`` with its math regions replaced by ``MASK_WIDTH``-character stand-ins.

    ``blocks`` are the regions as (masked start, raw start, raw end), sorted by position.
    """

    def __init__(self, raw: str, regions: list[tuple[int, int]]):
        self.raw = raw
        pieces, self.blocks, position, masked_length = [], [], 0, 0
        for start, end in sorted(regions):
            pieces += [raw[position:start], _STAND_IN]
            masked_length += start - position
            self.blocks.append((masked_length, start, end))
            masked_length += MASK_WIDTH
            position = end
        pieces.append(raw[position:])
        self.text = "".join(pieces)
        self._starts = [block[0] for block in self.blocks]
        self._ends = [start + MASK_WIDTH for start in self._starts]

    def to_raw(self, position: int) -> int:
        """Raw offset of a masked offset that lies outside every stand-in."""
        index = bisect.bisect_right(self._ends, position) - 1  # the last block ending at or before it
        if index < 0:
            return position
        return self.blocks[index][2] + position - self._ends[index]

    def covers_block(self, start: int, end: int) -> bool:
        """Whether masked span [start, end) overlaps a stand-in."""
        index = bisect.bisect_right(self._starts, end - 1) - 1
        return index >= 0 and self._starts[index] + MASK_WIDTH > start

    def blocks_in(self, start: int, end: int) -> list[tuple[int, int, int]]:
        """The blocks lying inside masked span [start, end)."""
        return [b for b in self.blocks if start <= b[0] and b[0] + MASK_WIDTH <= end]


def mask_math(text: str) -> Masked:
    """Stage 1 of the module docstring; raises ``StepSplitError`` on nested math."""
    regions: list[tuple[int, int]] = []
    masked = Masked(text, regions)
    for pattern in _MATH_REGIONS:
        found = []
        for match in pattern.finditer(masked.text):
            if masked.covers_block(match.start(), match.end()):
                raise StepSplitError(f"nested math region {match.group(0)[:60]!r}")
            found.append((masked.to_raw(match.start()), masked.to_raw(match.end())))
        if found:
            regions += found
            masked = Masked(text, regions)
    return masked


def _merge_forward(bounds: list[int], text: str, is_weak) -> list[int]:
    """A weak part absorbs the next part; a weak last part joins the previous one (none: error)."""
    bounds = list(bounds)
    index = 0
    while index < len(bounds) - 1:
        if not is_weak(text[bounds[index]:bounds[index + 1]]):
            index += 1
        elif index == len(bounds) - 2:
            if index == 0:
                raise StepSplitError(f"response too short to split: {text[:40]!r}")
            bounds.pop(index)
        else:
            bounds.pop(index + 1)
    return bounds


def _naive_bounds(masked: str) -> list[int]:
    """Stage 2: sentence ends and newlines, then short pieces absorb the next piece."""
    cuts = sorted({m.start() for m in _SENTENCE_BREAK.finditer(masked)} | {len(masked)})
    pieces, start = [], 0
    for end in cuts:
        sentence = masked[start:end]
        lines = sentence.split("\n")
        pieces += [lines[0]] + ["\n" + line for line in lines[1:]]
        start = end
    index = 0
    while index < len(pieces) - 1:
        if len(pieces[index]) < MIN_NAIVE_PIECE and not pieces[index].endswith("."):
            pieces[index] += pieces.pop(index + 1)
        else:
            index += 1
    bounds = [0]
    for piece in pieces:
        bounds.append(bounds[-1] + len(piece))
    return bounds


def _tail_bounds(masked: Masked, bounds: list[int]) -> list[int]:
    """Stage 3, in masked offsets: cut after math ending a sentence, merge short parts."""
    cut = [0]
    for start, end in zip(bounds[:-1], bounds[1:]):
        for block_start, raw_start, raw_end in masked.blocks_in(start, end):
            if masked.raw[raw_start:raw_end].endswith(_TAIL_ENDINGS):
                cut.append(block_start + MASK_WIDTH)
        cut.append(end)

    def is_weak(part: str) -> bool:
        return len(part) < MIN_TAIL_PART and not part.endswith(_TAIL_ENDINGS)

    raw_cut = [masked.to_raw(b) for b in cut]
    return _merge_forward(raw_cut, masked.raw, is_weak)


def _row_bounds(masked: Masked, bounds: list[int]) -> list[int]:
    """Stage 4, in raw offsets: cut at newlines inside math, merge short parts and lone openers."""
    raw = masked.raw
    cut = [0]
    for start, end in zip(bounds[:-1], bounds[1:]):
        seen = set()
        for _, raw_start, raw_end in masked.blocks:
            if raw_start < start or raw_end > end:
                continue
            block = raw[raw_start:raw_end]
            if block in seen:
                continue
            seen.add(block)
            cut += [raw_start + m.start() for m in re.finditer("\n", block)]
        cut.append(end)

    def is_weak(part: str) -> bool:
        return len(part) < MIN_ROW_PART or _LONE_OPENER.fullmatch(part.strip()) is not None

    return _merge_forward(cut, raw, is_weak)


def _nearest_middle(positions: list[int], length: int) -> int | None:
    best = None
    for position in positions:
        if best is None or abs(2 * position - length) < abs(2 * best - length):
            best = position
    return best


def _prose_cut(part: str) -> int | None:
    """Stage 6: a cut offset in ``part`` or None."""
    masked = mask_math(part)
    for pattern, back in _PROSE_SEPARATORS:
        best = _nearest_middle([m.end() - back for m in pattern.finditer(masked.text)], len(masked.text))
        if best is None:
            continue
        cut = masked.to_raw(best)
        if min(cut, len(part) - cut) >= MIN_PROSE_HALF:
            return cut
    return None


def _math_cut(part: str) -> int | None:
    """Stage 7: a cut offset in ``part`` or None."""
    for pattern in _MATH_SEPARATORS:
        best = _nearest_middle([m.end() for m in pattern.finditer(part)], len(part))
        if best is not None and min(best, len(part) - best) >= MIN_MATH_HALF:
            return best
    return None


def _break_long(part: str) -> list[int]:
    """Stage 5: cut offsets within ``part``, from 0 to ``len(part)``."""
    bounds = [0, len(part)]
    math_range = None  # [low, high), kept in the official (piece-relative) coordinates
    index = 0
    while index < len(bounds) - 1:
        start, end = bounds[index], bounds[index + 1]
        piece = part[start:end]
        if len(piece) <= MAX_STEP_CHARS:
            index += 1
            continue
        in_math = math_range is not None and math_range[0] <= start < math_range[1]
        cut = None if in_math else _prose_cut(piece)
        if cut is None:
            cut = _math_cut(piece)
            if cut is not None:
                low = cut if math_range is None else min(math_range[0], cut)
                high = len(piece) if math_range is None else max(math_range[1], len(piece))
                math_range = (low, high)
        if cut is None:
            index += 1
        else:
            bounds.insert(index + 1, start + cut)
    return bounds


def split_steps(text: str) -> list[str]:
    """Split a MATH response into steps (module docstring); ``"".join(steps) == text``.

    Raises ``StepSplitError`` where VinePPO's splitter fails (nested math, too short a text).
    """
    if not text:
        return []
    masked = mask_math(text)
    bounds = _naive_bounds(masked.text)
    bounds = _tail_bounds(masked, bounds)
    bounds = _row_bounds(masked, bounds)
    steps = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        part = text[start:end]
        if len(part) <= MAX_STEP_CHARS:
            steps.append(part)
            continue
        cuts = _break_long(part)
        steps += [part[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
    return steps
