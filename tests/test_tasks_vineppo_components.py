"""The pieces of the "vineppo" MATH grader against the official functions' outputs.

tests/data/official_symbolic_equal.jsonl records every call of the official symbolic check made
while grading tests/data/official_rewards_math.jsonl: both LaTeX answers, the plain text the
official converter (pylatexenc) made of each, and the verdict. The reader of plain-text math
(``text_expr``) is checked against expectations read off sympy's ``parse_expr`` with implicit
multiplication (the official reader), evaluated by hand.
"""
import json
import pathlib

import pytest
import sympy

from vinejax.tasks import math_vineppo_answer as answers
from vinejax.tasks import math_vineppo_symbolic as official
from vinejax.tasks import symbolic
from vinejax.tasks.latex_text import LatexError, latex_to_text
from vinejax.tasks.text_expr import ParseError, parse

DATA = pathlib.Path(__file__).parent / "data"
x, y, i, n, f, p, a = sympy.symbols("x y i n f p a")


def _symbolic_rows():
    with open(DATA / "official_symbolic_equal.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def _text_or_none(latex):
    try:
        return official.official_text(latex)
    except LatexError:
        return None


def test_latex_to_text_matches_the_official_converter():
    rows = _symbolic_rows()
    assert len(rows) > 300
    for row in rows:
        assert _text_or_none(row["a"]) == row["a_text"], row["a"]
        assert _text_or_none(row["b"]) == row["b_text"], row["b"]


def test_symbolic_verdicts_match_the_official_check():
    rows = _symbolic_rows()
    assert 50 < sum(row["equal"] for row in rows) < len(rows) - 50
    for row in rows:
        job = official.prepare(row["a"], row["b"])
        assert (job is not None and official.texts_equal(*job)) == row["equal"], row


@pytest.mark.parametrize("latex,text", [
    ("\\frac{x+1}{2}", "x+1/2"),  # no parentheses: the official quirk
    ("2\\sqrt[3]{x}", "2sqrt(x)"),
    ("\\dfrac{1}{2}", "12"),  # \dfrac is unknown to the converter (the grader rewrites it first)
    ("3 \\frac{1}{2}", "3 1/2"),
    ("50%", "50"),  # % starts a comment
    ("x^{2}_{n}", "x^2_n"),
    ("\\pi \\cdot 2", "pi*2"),
    ("(-\\infty,0)\\cup(1,\\infty)", "(-inf,0)U(1,inf)"),
    ("\\text{ cm}\\mbox{ units}", "cm"),
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "[ 1 2; 3 4 ]"),
    ("\\begin{pmatrix}1\\\\-15\\end{pmatrix}", "[   1; -15 ]"),
    ("\\le \\alpha \\unknown x", "≤αx"),
    ("\\sqrt\\frac{1}{b}", "sqrt(%s/%s)1b"),  # a macro as an argument takes no arguments
    ("\\text\\frac{1}{2}", "%s/%s12"),
    ("\\frac2}{\\pi}", "2/pi"),  # a "}" where an argument is expected is an empty argument
    ("\\frac{1}", "%s/%s1"),
])
def test_latex_to_text_examples(latex, text):
    assert latex_to_text(latex) == text


@pytest.mark.parametrize("latex", ["\\sqrt", "\\frac\\sqrt{2}{3}", "\\begin{pmatrix}\\end{pmatrix}", "{" * 100 + "1"])
def test_latex_to_text_fails_where_the_official_converter_does(latex):
    with pytest.raises(LatexError):
        latex_to_text(latex)


@pytest.mark.parametrize("text,value", [
    ("2x", 2 * x), ("x(2)", 2 * x), ("2(3)", 6), ("(2)(3)", 6), ("sqrt(2)x", sympy.sqrt(2) * x),
    ("xy(2)", 2 * x * y), ("x2", 2 * x), ("inf", i * n * f), ("pi2", 2 * p * i), ("2pi", 2 * sympy.pi),
    ("1/2x", x / 2), ("x/2y", x * y / 2), ("x^2y", x ** 2 * y), ("2^3x", 8 * x), ("-x^2", -x ** 2),
    ("2^-1", sympy.Rational(1, 2)), ("2^3^2", 512), ("3!", 6), ("(2+1)!", 6), ("2^3!", 64),
    ("1.2.3", sympy.Float("0.36")), ("01", 0), ("5j", 5 * sympy.I), ("E(2)", 2 * sympy.E),
    ("theta", sympy.Symbol("theta")), ("a_n", sympy.Symbol("a_n")), ("θx", sympy.Symbol("θ") * x),
    ("alpha2", 2 * a ** 2 * sympy.Symbol("l") * p * sympy.Symbol("h")), ("abs(-2)", 2), ("log(8,2)", 3),
    ("1/xy", y / x), ("2^xy", 2 ** x * y), ("i^x10", 10 * i ** x), ("xy!", sympy.factorial(x * y)),
    ("x2!", sympy.factorial(2 * x)), ("(i/i0.5^-1/7)", 0),
])
def test_implicit_reading_follows_parse_expr(text, value):
    assert sympy.simplify(parse(text) - value) == 0


def test_plain_reading_has_no_implicit_multiplication():
    assert parse("sqrt(2)/2", implicit=False) == sympy.sqrt(2) / 2
    assert parse("inf", implicit=False) == sympy.Symbol("inf")
    for text in ("2x", "3 1/2", "2pi"):
        with pytest.raises(ParseError):
            parse(text, implicit=False)


@pytest.mark.parametrize("text", [
    "__import__('os')", "eval(1)", "open(1)", "exec", "(1,2)", "x<y", "[1]", "{1}", "x.real", "'a'",
    "N(2)", "Symbol(1)", "lambda", "x=1", "1#2", "sqrt", "2!!!", "(" * 100 + "1" + ")" * 100, "x" * 3000,
])
def test_reader_refuses_anything_else(text):
    with pytest.raises(ParseError):
        parse(text)


@pytest.mark.parametrize("text,expected", [
    ("Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct. \\boxed{3}", ["\\frac{1}{2}"]),
    ("first \\boxed{1}, then \\boxed{2}, unclosed \\boxed{3", ["1", "2"]),
    ("\\boxed{50}% of them", ["50}"]),  # official quirk: a % after the box keeps the closing brace
    ("\\boxed 5 and no braces", []),
    ("So the answer is: 7.\nMore text", ["7"]),
    ("it is 1,234 and then 5.5.", ["5.5"]),
    ("no numbers at all", []),
    ("```output\n42\n```", ["42"]),
    ("\\boxed{\\dfrac{1}{2}}", ["\\frac{1}{2}"]),
    ("\\boxed{10\\text{ cm}}", ["10"]),
    ("\\boxed{10\\text{ cm}^2}", ["10\\text{cm}^2"]),
    ("\\boxed{x\\in [2, 5)}", ["[2,5)"]),
    ("\\boxed{x \\in [2, 5)}", ["x\\in[2,5)"]),
    ("\\boxed{1 \\text{ and } 2}", ["1", "2"]),
    ("\\boxed{\\$1,000.00}", ["1,000"]),
    ("\\boxed{\\sqrt3/2}", ["\\frac{\\sqrt{3}}{2}"]),
    ("\\boxed{2 \\cdot 3}", ["23"]),  # official quirk: \cdot is dropped
])
def test_answer_lists(text, expected):
    assert answers.answer_list("Compute it.", text) == expected


def test_comma_separated_answers_split_only_when_the_problem_says_so():
    assert answers.answer_list("Enter all solutions, separated by commas.", "\\boxed{1, 2}") == ["1", "2"]
    assert answers.answer_list("Enter all solutions, separated by commas.", "\\boxed{(1, 2)}") == ["(1,2)"]
    assert answers.answer_list("Enter the point.", "\\boxed{1, 2}") == ["1,2"]


def test_unknown_symbolic_check_is_refused():
    with pytest.raises(ValueError, match="unknown symbolic check 'eval'"):
        symbolic.get_pool(1).check_many([("1", "1")], check="eval")
