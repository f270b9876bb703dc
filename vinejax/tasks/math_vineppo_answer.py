"""MATH answers as the official VinePPO reward reads them (the "vineppo" grader).

VinePPO's MATH reward (``MATHRewardFunction`` with ``answer_prefix: null``) extracts a *list* of
answers from both the response and the gold solution, Minerva-style:

1. ``final answer is $X$. I hope`` -> ``[X]``;
2. otherwise, if the text contains ``boxed``: the contents of every ``boxed{...}`` (brace-matched;
   an unclosed one is skipped; a ``%`` right after the closing brace is kept);
3. otherwise the text after the last ``he answer is``;
4. otherwise the text of a last ```` ```output ```` block, or the last number
   (``-?\\d*\\.?\\d+`` after removing commas).

Each candidate keeps its first line, loses a leading ``:`` and trailing ``.``/``/``, and is
normalised by ``normalize`` (the official ``strip_string`` rules, listed there). The answer list
of a problem then splits a candidate at commas when the problem says "separated by commas" (and
the candidate has no brackets), or at ``\\text{and}``.

Everything here is plain string work; inputs are bounded by the caller (``MAX_ANSWER_CHARS``).
"""
from __future__ import annotations

import re

MAX_ANSWER_CHARS = 1000  # a longer candidate answer is never credited (nor normalised)
_MINERVA_START, _MINERVA_END = "final answer is $", "$. I hope"
_LAST_NUMBER = re.compile(r"-?\d*\.?\d+")
_TEXT_AND = re.compile(r"\\text\{\s*and\s*\}")


def boxed_answers(text: str) -> list[str]:
    """Contents of every ``boxed{...}`` in ``text``, in order; unclosed ones are skipped."""
    answers = []
    for piece in text.split("boxed{")[1:]:
        depth = 0
        for index, char in enumerate(piece):
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth < 0:
                    keep_percent = piece[index + 1 : index + 2] == "%"
                    answers.append(piece[: index + 1] if keep_percent else piece[:index])
                    break
    return answers


def _program_output(text: str) -> str:
    if "```output" not in text:
        return ""
    return text.split("```output")[-1].split("```")[0].strip()


def raw_candidates(text: str) -> list[str]:
    """The candidate answers of ``text`` before normalisation (rules 1-4 of the module docstring)."""
    if _MINERVA_START in text and _MINERVA_END in text:
        return [text.split(_MINERVA_START, 1)[1].split(_MINERVA_END, 1)[0].strip()]
    if "boxed" in text:
        return boxed_answers(text)
    if "he answer is" in text:
        return [text.split("he answer is")[-1].strip()]
    output = _program_output(text)
    if output:
        return [output]
    numbers = _LAST_NUMBER.findall(text.replace(",", ""))
    return [numbers[-1]] if numbers else []


def _braced_fractions(text: str) -> str:
    r"""``\frac12`` -> ``\frac{1}{2}``, ``\frac1{2}`` -> ``\frac{1}2``... (official ``_fix_fracs``):
    after each ``\frac`` not followed by ``{``, brace the first character, and the second one
    too unless it is ``{``. A ``\frac`` with fewer than two characters after it leaves the
    whole text unchanged."""
    pieces = text.split("\\frac")
    out = [pieces[0]]
    for piece in pieces[1:]:
        out.append("\\frac")
        if piece.startswith("{"):
            out.append(piece)
        elif len(piece) < 2:
            return text
        elif piece[1] == "{":
            out.append("{" + piece[0] + "}" + piece[1:])
        else:
            out.append("{" + piece[0] + "}{" + piece[1] + "}" + piece[2:])
    return "".join(out)


_PLAIN_INT = re.compile(r"0|-?[1-9][0-9]{0,4000}")


def _slash_to_frac(text: str) -> str:
    r"""``3/4`` -> ``\frac{3}{4}`` when both sides are plainly written integers (or contain
    ``sqrt``), as the official ``_fix_a_slash_b``."""
    parts = text.split("/")
    if len(parts) != 2:
        return text
    if all("sqrt" in part or _PLAIN_INT.fullmatch(part) for part in parts):
        return "\\frac{" + parts[0] + "}{" + parts[1] + "}"
    return text


def normalize(answer: str) -> str:
    r"""The official ``strip_string`` normalisation, rule by rule (order matters):

    strip; drop newlines; drop trailing ``.``; drop ``\!``; unwrap a whole-answer ``\text{...}``;
    ``tfrac``/``dfrac``/``cfrac`` -> ``frac``; drop ``\left``/``\right``; drop a trailing
    ``\text{...}`` unit (from the first ``\text{`` on, when the answer ends with ``}`` and
    something remains); drop ``^{\circ}``/``^\circ``; drop ``{cm}``/``{mm}``/``{m}`` (with
    ``^2``/``^3``), a final ``p.m.``, a ``t`` after a final digit; drop ``$`` and ``\$``; drop
    ``x\in``; ``\%`` -> ``%``; `` .`` -> `` 0.`` and ``{.`` -> ``{0.``; drop ``\cdot``;
    ``infinity``/``inf`` -> ``\infty``; drop ``\mathbf``/``\mathrm`` and ``\mbox{...}``; ``j``
    -> ``i`` when there is no ``i``; drop ``.000`` after digits; leading ``.`` -> ``0.``;
    ``\sqrt3`` -> ``\sqrt{3}`` and ``\tan3`` -> ``\tan{3}``; drop all spaces; brace
    ``\frac`` arguments; ``a/b`` -> ``\frac{a}{b}``; drop trailing ``\``, ``,`` and ``.``.
    """
    text = answer.strip().replace("\n", "").rstrip(".").replace("\\!", "")
    if text.startswith("\\text{") and text.endswith("}"):
        text = text.split("{", 1)[1][:-1]
    text = text.replace("tfrac", "frac").replace("dfrac", "frac").replace("cfrac", "frac")
    text = text.replace("\\left", "").replace("\\right", "")
    without_unit = _drop_final_text(text).strip()
    if without_unit and without_unit != text:
        text = without_unit
    text = text.replace("^{\\circ}", "").strip().replace("^\\circ", "").strip()
    text = re.sub(r"\{(c|m)?m\}(\^(2|3))?", "", text).strip()
    text = re.sub(r"p\.m\.$", "", text).strip()
    text = re.sub(r"(\d)\s*t$", r"\1", text).strip()
    text = text.replace("\\$", "").replace("$", "").replace("x\\in", "").replace("\\%", "%")
    text = text.replace(" .", " 0.").replace("{.", "{0.").replace("\\cdot", "")
    text = text.replace("infinity", "\\infty")
    if "\\infty" not in text:
        text = text.replace("inf", "\\infty")
    text = text.replace("+\\inity", "\\infty").replace("\\mathbf", "").replace("\\mathrm", "")
    text = re.sub(r"\\mbox\{.*?\}", "", text)
    if "j" in text and "i" not in text:
        text = text.replace("j", "i")
    text = re.sub(r"(\d+)\.0+([^\d])", r"\1\2", text)
    text = re.sub(r"(\d+)\.0+$", r"\1", text)
    if not text:
        return text
    if text[0] == ".":
        text = "0" + text
    for command in ("sqrt", "tan"):  # \sqrt3 -> \sqrt{3}, "\sqrt x" at the end -> \sqrt{x}
        text = re.sub(r"\\%s(-?[0-9.a-zA-Z]+)" % command, r"\\%s{\1}" % command, text)
        text = re.sub(r"\\%s\s+(\w+)$" % command, r"\\%s{\1}" % command, text)
    text = _slash_to_frac(_braced_fractions(text.replace(" ", "")))
    return text.rstrip("\\,.")


def _drop_final_text(text: str) -> str:
    r"""Remove from the first ``\text{`` to the end when the text ends with ``}``."""
    start = text.find("\\text{")
    if start < 0 or not text.endswith("}") or len(text) - start < len("\\text{}"):
        return text
    return text[:start]


def candidates(text: str) -> list[str]:
    """The normalised candidate answers of ``text``; a candidate over ``MAX_ANSWER_CHARS`` is
    replaced by ``None`` (it never counts as correct)."""
    out = []
    for raw in raw_candidates(text):
        raw = raw.strip().split("\n")[0].lstrip(":").rstrip(".").rstrip("/")
        out.append(normalize(raw) if len(raw) <= MAX_ANSWER_CHARS else None)
    return out


def answer_list(problem: str, text: str) -> list:
    """The official answer list of ``text`` (a response or a gold solution) for ``problem``."""
    answers = []
    for answer in candidates(text):
        if answer is None:
            answers.append(None)
        elif "separated by commas" in problem and not any(ch in answer for ch in "()[]"):
            answers.extend(part.strip() for part in answer.split(","))
        elif _TEXT_AND.search(answer):
            answers.extend(part.strip() for part in _TEXT_AND.split(answer))
        else:
            answers.append(answer.strip())
    return answers
