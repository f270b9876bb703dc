"""LaTeX answers as plain text, the way the official VinePPO grader sees them before sympy.

The official symbolic check turns each answer into text with pylatexenc's ``latex2text`` and
then replaces ``√ π ∞ ∪ · ×`` by ``sqrt pi inf U * *``. ``latex_to_text`` reproduces that text
for the LaTeX found in answers (the rules below were read off pylatexenc 2.10's behaviour):

- braces group and disappear (``x^{2}`` -> ``x^2``); an unmatched ``}`` is dropped;
- ``\\frac{a}{b}`` -> ``a/b`` with no parentheses (``\\frac{x+1}{2}`` -> ``x+1/2``);
  ``\\sqrt[n]{a}`` -> ``√(a)``; an argument is a ``{group}`` or a single token;
- symbol macros become their Unicode character (``\\pi`` -> ``π``, ``\\le`` -> ``≤``),
  function names stay (``\\sin`` -> ``sin``), unknown macros vanish (``\\dfrac`` -> nothing,
  so ``\\dfrac{1}{2}`` -> ``12``); spaces after a control word are skipped;
- ``\\text``-like macros keep their argument; ``\\mbox``/``\\hspace``/``\\textsf``/``\\texttt``
  drop it; accents add a combining mark after every character of their argument; a macro
  that is itself an argument takes no arguments (``\\sqrt\\frac{1}{2}`` -> ``√(%s/%s)12``)
  and a ``}`` where an argument is expected is an empty argument (``\\frac2}{3}`` -> ``2/3``);
- ``%`` starts a comment, ``$`` vanishes, ``~`` is a no-break space, ``--``/``---`` are dashes,
  ``&`` is three spaces, ``\\\\`` a newline; ``pmatrix``/``bmatrix``/``array``/``smallmatrix``
  become ``[ a b; c d ]`` (cells right-aligned to the widest), other environments keep their body.

``LatexError`` is raised where pylatexenc fails (``\\sqrt`` without argument, an empty matrix,
nesting deeper than ``MAX_DEPTH``). Linear in the input length; no evaluation.
"""
from __future__ import annotations

MAX_DEPTH = 50


class LatexError(ValueError):
    """The text cannot be converted (the official converter fails on it too)."""


_GREEK = {
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ϵ", "varepsilon": "ε",
    "zeta": "ζ", "eta": "η", "theta": "θ", "vartheta": "ϑ", "iota": "ι", "kappa": "κ",
    "lambda": "λ", "mu": "μ", "nu": "ν", "xi": "ξ", "omicron": "ο", "pi": "π", "varpi": "ϖ",
    "rho": "ρ", "varrho": "ϱ", "sigma": "σ", "varsigma": "ς", "tau": "τ", "upsilon": "υ",
    "phi": "ϕ", "varphi": "φ", "chi": "χ", "psi": "ψ", "omega": "ω", "Gamma": "Γ",
    "Delta": "Δ", "Theta": "Θ", "Lambda": "Λ", "Xi": "Ξ", "Pi": "Π", "Sigma": "Σ",
    "Upsilon": "Υ", "Phi": "Φ", "Psi": "Ψ", "Omega": "Ω",
}
_SYMBOLS = {
    "infty": "∞", "circ": "∘", "cup": "∪", "cap": "∩", "cdot": "·", "times": "×", "div": "÷",
    "pm": "±", "mp": "∓", "le": "≤", "leq": "≤", "ge": "≥", "geq": "≥", "neq": "≠",
    "approx": "≈", "equiv": "≡", "sim": "∼", "simeq": "≃", "cong": "≅", "propto": "∝",
    "in": "∈", "notin": "∉", "ni": "∋", "subset": "⊂", "supset": "⊃", "subseteq": "⊆",
    "supseteq": "⊇", "setminus": "∖", "emptyset": "∅", "varnothing": "∅", "forall": "∀",
    "exists": "∃", "partial": "∂", "nabla": "∇", "angle": "∠", "perp": "⊥", "parallel": "∥",
    "mid": "|", "nmid": "∤", "vert": "|", "lvert": "|", "rvert": "|", "langle": "⟨",
    "rangle": "⟩", "lfloor": "⌊", "rfloor": "⌋", "lceil": "⌈", "rceil": "⌉", "lbrace": "{",
    "rbrace": "}", "ast": "∗", "star": "⋆", "bullet": "∙", "wedge": "∧", "vee": "∨",
    "lnot": "¬", "oplus": "⊕", "otimes": "⊗", "to": "→", "rightarrow": "→",
    "leftarrow": "←", "Rightarrow": "⇒", "ldots": "…", "dots": "…", "cdots": "⋯",
    "vdots": "⋮", "ddots": "⋱", "sum": "∑", "prod": "∏", "int": "∫", "ell": "ℓ", "hbar": "ħ",
    "aleph": "ℵ", "textdegree": "°", "prime": "'", "dagger": "†", "dag": "†",
    "ln": "ln", "log": "log", "exp": "exp", "sin": "sin", "cos": "cos", "tan": "tan",
    "arcsin": "arcsin", "arccos": "arccos", "arctan": "arctan", "sinh": "sinh", "cosh": "cosh",
    "tanh": "tanh", "max": "max", "min": "min", "sup": "sup", "inf": "inf", "lim": "lim",
    "limsup": "lim sup", "liminf": "lim inf",
    ",": " ", ";": " ", ":": " ", " ": " ", "!": "", "quad": "  ", "qquad": "    ",
    "\\": "\n", "{": "{", "}": "}", "$": "$", "%": "%", "&": "&", "#": "#", "_": "_",
}
_ACCENTS = {
    "bar": "\u0305", "hat": "\u0302", "widehat": "", "dot": "\u0307", "ddot": "\u0308",
    "tilde": "\u0303", "vec": "\u20d7", "not": "\u0338", "acute": "\u0301", "grave": "\u0300",
    "breve": "\u0306", "check": "\u030c", "'": "\u0301", "`": "\u0300", "^": "\u0302",
    '"': "\u0308", "~": "\u0303", "=": "\u0304", ".": "\u0307", "u": "\u0306", "v": "\u030c",
}
_FRACTIONS = ("frac", "nicefrac", "textfrac")
_DISCARD_ARGUMENT = ("mbox", "hspace", "textsf", "texttt")
_KEEP_ARGUMENT = ("text", "textbf", "textit", "textrm", "textsc", "textsl", "emph", "mathrm", "mathbf",
                  "mathit", "mathsf", "mathtt", "mathbb", "mathcal", "mathscr", "mathfrak", "overline",
                  "underline", "overbrace", "underbrace", "overrightarrow", "overleftarrow", "widehat",
                  "widetilde")
_MATRICES = ("array", "pmatrix", "bmatrix", "smallmatrix", "psmallmatrix", "bsmallmatrix")
_MATH_DELIMITERS = ("(", ")", "[", "]")
_CELL = "\x00"  # marks "&" inside a matrix while its body is converted


def _alone(name: str) -> str:
    """A macro's text when it is itself an argument (pylatexenc then fills no template)."""
    if name in _FRACTIONS:
        return "%s/%s"
    if name == "sqrt":
        raise LatexError("\\sqrt without an argument")
    if name in _ACCENTS:
        return " " + _ACCENTS[name]
    return _GREEK.get(name) or _SYMBOLS.get(name, "")


def latex_to_text(latex: str) -> str:
    """Plain text of ``latex`` (module docstring), then ``√π∞∪·×`` -> ``sqrt pi inf U * *``."""
    text = _Reader(latex).nodes(stop=None, depth=0)
    for symbol, word in (("√", "sqrt"), ("π", "pi"), ("∞", "inf"), ("∪", "U"), ("·", "*"), ("×", "*")):
        text = text.replace(symbol, word)
    return text.strip()


class _Reader:
    """A cursor over the LaTeX text; every method consumes what it converts."""

    def __init__(self, latex: str):
        self.text, self.pos = latex, 0
        self.cell = "   "  # what "&" becomes: spaces, or the cell separator inside a matrix

    def peek(self, count: int = 1) -> str:
        return self.text[self.pos : self.pos + count]

    def nodes(self, stop: str | None, depth: int) -> str:
        """Convert until the end, or until ``}`` (stop="}") or ``\\end{...}`` (stop="end")."""
        if depth > MAX_DEPTH:
            raise LatexError("LaTeX nested too deeply")
        out = []
        while self.pos < len(self.text):
            char = self.peek()
            if char == "}":
                self.pos += 1
                if stop == "}":
                    return "".join(out)
                continue  # an unmatched closing brace vanishes
            if stop == "end" and self.text.startswith("\\end", self.pos):
                return "".join(out)
            out.append(self.node(depth))
        return "".join(out)

    def node(self, depth: int) -> str:
        """Convert one node: a macro, a group, a special character or a plain character."""
        text, char = self.text, self.peek()
        if char == "\\":
            return self.macro(depth)
        if char == "{":
            self.pos += 1
            return self.nodes(stop="}", depth=depth + 1)
        if char == "%":  # a comment runs to the end of the line
            end = text.find("\n", self.pos)
            self.pos = len(text) if end < 0 else end + 1
            return ""
        for special, value in (("---", "—"), ("--", "–"), ("``", "“"), ("''", "”"),
                               ("~", "\xa0"), ("&", self.cell), ("$", "")):
            if text.startswith(special, self.pos):
                self.pos += len(special)
                return value
        self.pos += 1
        return char

    def argument(self, depth: int) -> str | None:
        """The text of the next argument, or None at the end of the text. An argument is a
        ``{group}``, one character, or one macro taken *without* its own arguments
        (``\\sqrt\\frac{1}{2}`` -> ``√(%s/%s)12``); a ``}`` there is an empty argument."""
        while self.peek() in (" ", "\t", "\n") and self.peek():
            self.pos += 1
        if not self.peek():
            return None
        if self.peek() == "}":
            self.pos += 1
            return ""
        if self.peek() == "\\":
            return self.macro(depth + 1, alone=True)
        return self.node(depth + 1)

    def optional_argument(self) -> None:
        """Skip a ``[...]`` optional argument if there is one."""
        if self.peek() == "[":
            end = self.text.find("]", self.pos)
            self.pos = len(self.text) if end < 0 else end + 1

    def macro(self, depth: int, alone: bool = False) -> str:
        """Convert a macro; ``alone``: it is an argument itself and takes no arguments."""
        text = self.text
        start = self.pos + 1
        end = start
        while end < len(text) and text[end].isalpha() and text[end].isascii():
            end += 1
        if end == start:  # a control symbol: one non-letter character
            end = min(start + 1, len(text))
        name = text[start:end]
        self.pos = end
        if name.isalpha():
            while self.peek() == " ":
                self.pos += 1
        return self.expand(name, depth, alone)

    def expand(self, name: str, depth: int, alone: bool) -> str:
        if alone:
            return _alone(name)
        if name in _FRACTIONS:
            mark = self.pos
            numerator = self.argument(depth)
            denominator = self.argument(depth) if numerator is not None else None
            if denominator is None:  # pylatexenc prints its unfilled template
                self.pos = mark
                return "%s/%s"
            return f"{numerator}/{denominator}"
        if name == "sqrt":
            self.optional_argument()
            radicand = self.argument(depth)
            if radicand is None:
                raise LatexError("\\sqrt without an argument")
            return f"√({radicand})"
        if name in _DISCARD_ARGUMENT:
            self.argument(depth)
            return ""
        if name in _KEEP_ARGUMENT:
            return self.argument(depth) or ""
        if name in _ACCENTS:
            body = self.argument(depth)
            body = " " if body is None or body == "" else body
            return "".join(char + _ACCENTS[name] for char in body)
        if name == "begin":
            return self.environment(depth)
        if name in _MATH_DELIMITERS:
            return ""
        return _GREEK.get(name) or _SYMBOLS.get(name, "")

    def environment(self, depth: int) -> str:
        name = self.argument(depth) or ""
        if name == "array":
            self.argument(depth)  # the column specification
        outer_cell, self.cell = self.cell, (_CELL if name in _MATRICES else "   ")
        body = self.nodes(stop="end", depth=depth + 1)
        self.cell = outer_cell
        if self.text.startswith("\\end", self.pos):
            self.pos += len("\\end")
            self.argument(depth)
        if name not in _MATRICES:
            return body
        rows = [row.split(_CELL) for row in body.split("\n")]
        if not any(any(cells) for cells in rows):
            raise LatexError("empty matrix")
        width = max(len(cell) for cells in rows for cell in cells)  # cells are right-aligned
        lines = [" ".join(cell.rjust(width) for cell in cells) for cells in rows]
        return "[ " + "; ".join(lines) + " ]"
