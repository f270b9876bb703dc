"""Where the arithmetic task's demonstrations slip: `slip_ops` (operation kinds) and `slip_steps`
(operation lines), checked line by line against a re-derivation of every line."""
import re

import pytest

from vinejax.tasks import arithmetic


def lines_of(problem):
    """[(line index, a, op, b, written result, correct result)] of the operation lines (a slipped
    chain may run below 0, e.g. `7*3=1` then `1-13=-12`)."""
    out = []
    for index, line in enumerate(problem.solution.split("\n")[:-1]):
        a, op, b, result = re.fullmatch(r"(-?\d+)([+*-])(\d+)=(-?\d+)", line).groups()
        a, b, result = int(a), int(b), int(result)
        out.append((index, a, op, b, result, a + b if op == "+" else a - b if op == "-" else a * b))
    return out


def carries(a: int, op: str, b: int) -> bool:
    units = a % 10
    return (op == "+" and units + b % 10 >= 10) or (op == "-" and units < b % 10) or (op == "*" and units * b >= 10)


HARD = dict(num_operations=5, start_range=(2, 20), add_range=(1, 20), mul_range=(2, 3), max_value=99,
            slip_rate=0.9, slip_kind="carry", slip_ops="*")


def test_multiplication_carries_slip_and_nothing_else():
    cfg = arithmetic.ArithmeticConfig(**HARD)
    opportunities = dropped = wrong_answers = 0
    for i in range(1200):
        p = arithmetic.make_problem(i, "train", cfg)
        rows = lines_of(p)
        for index, a, op, b, result, correct in rows:
            if result != correct:
                assert op == "*" and carries(a, op, b), (p.solution, index)
                assert correct - result == 10 * ((a % 10) * b // 10)  # exactly the units carry, dropped
                assert index < len(rows) - 1  # the last operation line never slips
                dropped += 1
            if op == "*" and carries(a, op, b) and index < len(rows) - 1 and correct - 10 * ((a % 10) * b // 10) >= 0:
                opportunities += 1
        assert [i for i, *_, r, c in rows if r != c] == p.meta["slips"]
        wrong_answers += bool(p.meta["slips"])
        assert arithmetic.grade(p.solution, p) == (0.0 if p.meta["slips"] else 1.0)
    assert opportunities > 400
    # a slip is skipped when it would land on the true running value; so slightly under the rate
    assert 0.8 < dropped / opportunities <= 0.9 + 0.03
    assert 0.35 < wrong_answers / 1200 < 0.7


def test_slip_steps_restrict_slips_to_the_given_lines():
    cfg = arithmetic.ArithmeticConfig(num_operations=5, slip_rate=0.5, slip_kind="random", slip_steps=(1, 3))
    slipped_lines = set()
    for i in range(600):
        p = arithmetic.make_problem(i, "train", cfg)
        slipped_lines.update(p.meta["slips"])
    assert slipped_lines == {1, 3}


def test_every_line_and_operation_allowed_is_the_default_demonstration():
    """Naming every intermediate line and every operation reproduces the default data exactly
    (the option draws no extra random numbers), so existing SFT data do not change."""
    base = dict(num_operations=3, start_range=(2, 20), add_range=(1, 20), mul_range=(2, 3), max_value=99,
                slip_rate=0.6, slip_kind="carry")
    default = arithmetic.load_split("train", 300, **base)
    explicit = arithmetic.load_split("train", 300, **base, slip_ops="*-+", slip_steps=[0, 1])
    assert [p.solution for p in default] == [p.solution for p in explicit]
    assert sum(bool(p.meta["slips"]) for p in default) > 60


def test_options_arrive_through_load_split_as_config_values():
    problems = arithmetic.load_split("validation", 50, **HARD | {"slip_steps": [0, 1, 2]})
    assert all(len(lines_of(p)) == 5 for p in problems)
    assert all(set(p.meta["slips"]) <= {0, 1, 2} for p in problems)


@pytest.mark.parametrize("options, culprit", [
    ({"slip_ops": "/"}, "slip_ops"),
    ({"slip_ops": ""}, "slip_ops"),
    ({"slip_steps": (3,)}, "slip_steps"),  # 4 operations: lines 0..2 are intermediate
    ({"slip_steps": (-1,)}, "slip_steps"),
    ({"slip_kind": "typo"}, "slip_kind"),
])
def test_bad_slip_options_name_the_option(options, culprit):
    with pytest.raises(ValueError, match=culprit):
        arithmetic.ArithmeticConfig(num_operations=4, **options)
