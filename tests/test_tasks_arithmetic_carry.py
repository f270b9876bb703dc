"""Systematic carry slips of the arithmetic task's noisy demonstrations, checked line by line."""
import re

from vinejax.tasks import arithmetic


def carries(a: int, op: str, b: int) -> bool:
    units = a % 10
    return (op == "+" and units + b % 10 >= 10) or (op == "-" and units < b % 10) or (op == "*" and units * b >= 10)


def test_carry_slips_drop_exactly_the_carry_at_the_configured_rate():
    cfg = arithmetic.ArithmeticConfig(num_operations=3, slip_rate=0.6, slip_kind="carry", seed=1)
    dropped = opportunities = wrong_final = 0
    for i in range(1500):
        p = arithmetic.make_problem(i, "train", cfg)
        lines = p.solution.split("\n")
        for line in lines[:-2]:  # intermediate operation lines
            a, op, b, result = re.fullmatch(r"(\d+)([+*-])(\d+)=(-?\d+)", line).groups()
            a, b, result = int(a), int(b), int(result)
            correct = a + b if op == "+" else a - b if op == "-" else a * b
            if not carries(a, op, b):
                assert result == correct, line  # only carries are ever dropped
                continue
            opportunities += 1
            if result != correct:
                dropped += 1
                units_carry = (a % 10) * b // 10 if op == "*" else 1
                assert abs(result - correct) == 10 * units_carry, line
        assert lines[-1] == f"#### {lines[-2].split('=')[1]}"
        if p.meta["slips"]:
            wrong_final += 1
            assert arithmetic.grade(p.solution, p) == 0.0
        else:
            assert arithmetic.grade(p.solution, p) == 1.0
    assert opportunities > 500
    assert abs(dropped / opportunities - 0.6) < 0.05
    assert wrong_final > 0
