"""Hand-checked equivalence table for MATH answers under the "strict" grader (each row checked
by hand). The "vineppo" grader follows the official reward instead: see
test_tasks_grading_official.py."""
import pytest

from vinejax.tasks import Problem
from vinejax.tasks import math_grade_strict as math_task


def _problem(gold: str) -> Problem:
    return Problem(problem="Compute it.", answer=gold, solution=f"So $\\boxed{{{gold}}}$.")

# (predicted answer, gold answer, equal?)
TABLE = [
    # fractions / decimals / percent
    ("\\frac{1}{2}", "0.5", True),
    ("\\dfrac{3}{4}", "\\frac34", True),
    ("3/4", "\\frac{3}{4}", True),
    ("0.75", "\\tfrac{3}{4}", True),
    ("\\frac{2}{4}", "\\frac{1}{2}", True),
    ("\\frac{1}{3}", "0.3333", True),
    ("-\\frac{1}{4027}", "0", False),  # small values compare relatively
    ("0.000992", "0", False),
    ("12_7", "12", False),  # a number in base 7
    ("\\frac{1}{3}", "0.3", False),
    ("\\frac{2}{3}", "\\frac{3}{2}", False),
    ("50\\%", "50", True),
    ("50\\%", "0.5", True),
    ("25\\%", "0.3", False),
    (".5", "\\frac{1}{2}", True),
    ("1.0", "1", True),
    ("2\\frac{1}{2}", "2.5", True),  # mixed number, not 2 * 1/2
    ("2\\frac{1}{2}", "1", False),
    ("3:1", "3", False),  # a ratio is not a number
    ("1.01", "1", False),
    # sqrt / pi
    ("\\sqrt{8}", "2\\sqrt{2}", True),
    ("\\sqrt2", "\\sqrt{2}", True),
    ("\\sqrt{3}", "\\sqrt{2}", False),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}", True),
    ("2\\pi", "\\pi \\cdot 2", True),
    ("\\pi", "3.14159", True),
    ("4\\pi", "3\\pi", False),
    ("\\frac{\\pi}{2}", "\\frac12\\pi", True),
    # intervals
    ("(-\\infty, 3)", "(-\\infty,3)", True),
    ("\\left[ 1, 2 \\right)", "[1,2)", True),
    ("[1,2)", "(1,2)", False),
    ("(0,\\frac{1}{2}]", "(0, 0.5]", True),
    ("(1, 2]", "(1, 3]", False),
    ("x \\in [2, 5)", "[2,5)", True),
    ("x \\in (2, 5)", "[2,5)", False),
    # tuples
    ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("(1,2,3)", "(1, 2, 3)", True),
    ("(1,2)", "(2,1)", False),
    ("(1,2)", "(1,2,3)", False),
    # units and \text{}
    ("10\\text{ cm}", "10", True),
    ("5\\text{ inches}", "5", True),
    ("\\text{Monday}", "Monday", True),
    ("\\text{Monday}", "\\text{Tuesday}", False),
    ("\\text{(C)}", "(C)", True),
    ("\\$18.90", "18.90", True),
    ("12 \\mbox{ meters}", "12", True),
    ("7\\text{ cm}^2", "8", False),
    # degrees
    ("30^\\circ", "30", True),
    ("30^{\\circ}", "30", True),
    ("45^\\circ", "30", False),
    # x = forms
    ("x = 5", "5", True),
    ("x=\\frac{1}{2}", "0.5", True),
    ("y = 2x + 3", "y=2x+3", True),
    ("y = 2x + 3", "2x+3", True),
    ("x = 4", "5", False),
    # scientific notation
    ("1.5 \\times 10^{3}", "1500", True),
    ("2\\cdot10^3", "2000", True),
    ("1.5e3", "1500", True),
    ("3 \\times 10^{2}", "3000", False),
    # matrices
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True),
    ("\\begin{pmatrix} 1 & 0 \\\\ 0 & 1 \\end{pmatrix}", "\\begin{pmatrix} 1 & 0 \\\\ 0 & 1 \\end{pmatrix}", True),
    ("\\begin{pmatrix} 0.5 \\\\ -1 \\end{pmatrix}", "\\begin{pmatrix} \\frac{1}{2} \\\\ -1 \\end{pmatrix}", True),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}", False),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "(1,2)", False),
    # negative numbers
    ("-3", "-3", True),
    ("-3", "3", False),
    ("-\\frac{1}{2}", "-0.5", True),
    ("\\frac{-1}{2}", "-\\frac{1}{2}", True),
    ("-0.5", "0.5", False),
    # thousands separators
    ("1,000", "1000", True),
    ("1{,}000", "1000", True),
    ("12,345,678", "12345678", True),
    ("1,001", "1000", False),
    ("1,000,000", "1000001", False),
    # symbolic expressions
    ("x^2+2x+1", "(x+1)^2", True),
    ("(x+1)(x-1)", "x^2-1", True),
    ("x^2+1", "x^2-1", False),
    ("2a+b", "b+2a", True),
    # lists of solutions
    ("1, 2", "1,2", True),
    ("1, 2", "1, 3", False),
    ("2, 1", "1, 2", False),  # order matters, as in the reference graders
    # other unequal pairs
    ("\\frac{1}{2}", "\\frac{1}{4}", False),
    ("\\sqrt{2}", "1.41", False),
    ("3.14", "\\pi", False),
    ("\\infty", "100", False),
]


@pytest.mark.parametrize("predicted,gold,expected", TABLE)
def test_equivalence_table(predicted, gold, expected):
    response = f"So the final answer is $\\boxed{{{predicted}}}$."
    assert math_task.grade(response, _problem(gold)) == float(expected)


def test_table_is_large_and_balanced():
    assert len(TABLE) >= 60
    assert sum(e for _, _, e in TABLE) >= 25 and sum(not e for _, _, e in TABLE) >= 25


@pytest.mark.parametrize("response,gold,expected", [
    ("Thus the final answer is $7$. I hope it is correct.", "7", 1.0),
    ("The answer is 42.", "42", 1.0),
    ("We get 3 apples and then 12 pears", "12", 1.0),
    ("\\boxed{3} was wrong; now \\boxed{4}", "4", 1.0),
    ("so the result is \\boxed{\\frac{1}{2}", "\\frac{1}{2}", 0.0),  # unbalanced: unfinished
    ("no answer here", "5", 0.0),
    ("so it is \\boxed{}", "", 0.0),  # an empty answer is never correct
    ("$\\boxed 5$.", "5", 1.0),
])
def test_extraction_order(response, gold, expected):
    assert math_task.grade(response, _problem(gold)) == expected


def test_grade_batch_matches_grade():
    responses = [f"\\boxed{{{p}}}" for p, _, _ in TABLE]
    golds = [g for _, g, _ in TABLE]
    rewards = math_task.grade_batch(responses, [_problem(g) for g in golds], num_workers=2)
    assert rewards.dtype.name == "float32"
    assert rewards.tolist() == [float(e) for _, _, e in TABLE]
