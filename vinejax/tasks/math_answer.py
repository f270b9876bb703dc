"""MATH answers: extracting the final answer from a response and normalising it.

Extraction order (VINEPPO.md section 4): "final answer is $...$. I hope" (Minerva format), the
last ``\\boxed{...}`` / ``\\fbox{...}`` (brace-matched; ``\\boxed 5`` runs to the next ``$``),
"the answer is ...", and finally the last number in the text.

``normalize`` follows the Hendrycks/Minerva/DeepSeekMath ``strip_string`` rules: ``\\text{}``
units, dfrac/tfrac -> frac, ``\\left``/``\\right``, degrees, ``$``, percent, ``\\frac12`` ->
``\\frac{1}{2}``, ``a/b`` -> ``\\frac{a}{b}``, thousands separators, spaces. All steps are plain
string work, linear in the input length.
"""
from __future__ import annotations

import re

_MINERVA = re.compile(r"final answer is \$(.{0,2000}?)\$\. I hope", re.DOTALL)
_THE_ANSWER_IS = re.compile(r"the answer is[:\s]*", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_UNIT_WORDS = (
    "degrees", "degree", "cm", "centimeters", "meters", "meter", "inches", "inch", "feet", "foot",
    "units", "unit", "square units", "sq units", "miles", "mph", "hours", "hour", "minutes",
    "seconds", "days", "cents", "dollars", "km", "kg", "grams", "pounds", "people", "students",
    "ways", "points", "times", "years", "mm", "m", "ft", "in",
)
_UNIT_TAIL = re.compile(
    r"(?:\\(?:text|mbox|mathrm)\{\s*(?:square\s+|sq\.?\s+|cubic\s+)?(?:%s)\^?\d?\s*\}"
    r"(?:\^\{?\d\}?)?)\s*$" % "|".join(sorted(map(re.escape, _UNIT_WORDS), key=len, reverse=True)))


def find_boxed(text: str) -> str | None:
    """Contents of the last ``\\boxed{...}``/``\\fbox{...}`` (brace-matched), or None."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    rest = text[start:]
    command_length = len("\\boxed") if rest.startswith("\\boxed") else len("\\fbox")
    rest = rest[command_length:]
    stripped = rest.lstrip()
    if stripped.startswith("{"):
        depth = 0
        for index, char in enumerate(stripped):
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    return stripped[1:index]
        return None  # unbalanced: unfinished answer
    if rest.startswith(" "):  # "\boxed 5$": runs up to the next "$"
        return rest[1:].split("$", 1)[0].strip()
    return None


def extract_answer(text: str) -> str | None:
    """The final answer of a MATH response (see module docstring), or None when there is none."""
    match = _MINERVA.search(text)
    if match:
        return match.group(1).strip()
    boxed = find_boxed(text)
    if boxed is not None:
        return boxed.strip()
    matches = list(_THE_ANSWER_IS.finditer(text))
    if matches:
        tail = text[matches[-1].end():].split("\n", 1)[0].strip()
        tail = re.sub(r"\.\s.*$", "", tail).rstrip(".").strip()
        if tail:
            return tail
    numbers = _NUMBER.findall(text[-5000:])
    if numbers:
        return numbers[-1]
    return None


def _remove_braced_command(text: str, command: str) -> str:
    r"""Replace ``\command{X}`` by ``X`` (brace-matched, linear scan)."""
    out, index, key = [], 0, "\\" + command + "{"
    while True:
        start = text.find(key, index)
        if start < 0:
            out.append(text[index:])
            return "".join(out)
        out.append(text[index:start])
        depth, position = 0, start + len(key) - 1
        end = -1
        for position in range(start + len(key) - 1, len(text)):
            if text[position] == "{":
                depth += 1
            elif text[position] == "}":
                depth -= 1
                if depth == 0:
                    end = position
                    break
        if end < 0:  # unbalanced: keep the rest untouched
            out.append(text[start:])
            return "".join(out)
        out.append(text[start + len(key):end])
        index = end + 1


def _fix_fracs(text: str) -> str:
    r"""``\frac12`` -> ``\frac{1}{2}``, ``\frac1{2}`` -> ``\frac{1}{2}``, ``\frac{1}2`` -> ``\frac{1}{2}``."""
    text = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", text)
    text = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", text)
    text = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", text)
    text = re.sub(r"\\frac([a-zA-Z])([a-zA-Z0-9])", r"\\frac{\1}{\2}", text)
    return text


def _fix_sqrt(text: str) -> str:
    r"""``\sqrt3`` -> ``\sqrt{3}``, ``\sqrt x`` -> ``\sqrt{x}``."""
    return re.sub(r"\\sqrt\s*([0-9a-zA-Z])", r"\\sqrt{\1}", text)


def normalize(answer: str) -> str:
    """Canonical string form of a MATH answer (see module docstring); linear time."""
    text = answer.strip().replace("\n", "").replace("\\!", "")
    text = re.sub(r"(?<!\\)\\(?:,|;|:|quad|qquad)", "", text)
    text = re.sub(r"(?<!\\)\\ ", " ", text)
    text = text.replace("\\displaystyle", "")
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    text = text.replace("\\left", "").replace("\\right", "")
    text = text.replace("\\bigl", "").replace("\\bigr", "").replace("\\Bigl", "").replace("\\Bigr", "")
    text = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°|\\circ|\\degree", "", text)
    text = text.replace("\\$", "").replace("$", "")
    previous = None
    while previous != text:  # strip trailing units such as "\text{ cm}^2", "\mbox{inches}"
        previous = text
        text = _UNIT_TAIL.sub("", text).strip()
    for command in ("text", "textbf", "mbox", "mathrm", "mathbf", "textnormal", "operatorname"):
        text = _remove_braced_command(text, command)
    text = text.replace("\\%", "").replace("%", "")
    text = re.sub(r"(?<![\d}])\.(\d)", r"0.\1", text)  # ".5" -> "0.5"
    text = re.sub(r"^\s*[a-zA-Z]\s*\\in\s*", "", text)  # "x \in [2, 5)" -> "[2, 5)"
    parts = text.split("=")
    if len(parts) == 2 and len(parts[0].strip()) <= 2:  # "x = 5" -> "5"
        text = parts[1]
    text = _fix_sqrt(text)
    text = text.replace(" ", "")
    text = _fix_fracs(text)
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", text):  # thousands separators
        text = text.replace(",", "")
    text = re.sub(r"\{,\}", "", text)  # "1{,}000"
    text = text.rstrip(".")
    if text == "0.5":
        text = "\\frac{1}{2}"
    match = re.fullmatch(r"(-?)(\d+)/(\d+)", text)
    if match:
        text = f"{match.group(1)}\\frac{{{match.group(2)}}}{{{match.group(3)}}}"
    return text
