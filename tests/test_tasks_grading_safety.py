"""Untrusted answers are never executed and every grade call is bounded in time, whichever
grader ("vineppo" or "strict") is used."""
import os
import time

import pytest

from vinejax.tasks import Problem, get_task, symbolic

TIME_BOUND = 6.0  # seconds per call, including a possible worker restart on a loaded 2-core machine
GRADERS = ["vineppo", "strict"]


def _math_problem(gold: str) -> Problem:
    return Problem(problem="Compute it.", answer=gold, solution=f"Thus the answer is $\\boxed{{{gold}}}$.")


def _gsm8k_problem(gold: str) -> Problem:
    return Problem(problem="How many?", answer=gold, solution=f"It is {gold}.\n#### {gold}")


def _python_payloads(marker):
    return [
        f"__import__('os').system('touch {marker}')",
        f"(lambda: __import__('os').system('touch {marker}'))()",
        "().__class__.__base__.__subclasses__()",
        f"open('{marker}', 'w').write('x')",
        f"exec(\"open('{marker}','w')\")",
        f"eval(\"__import__('os').system('touch {marker}')\")",
    ]


@pytest.mark.parametrize("grader", GRADERS)
@pytest.mark.parametrize("index", range(6))
def test_python_in_answers_is_never_executed(tmp_path, index, grader):
    math_task, gsm8k = get_task("math", grader=grader), get_task("gsm8k", grader=grader)
    marker = tmp_path / "MARKER"
    payload = _python_payloads(marker)[index]
    for response, gold in [(f"\\boxed{{{payload}}}", "0"), (f"\\boxed{{{payload}}}", "x+1"),
                           ("\\boxed{x+1}", payload), (f"The answer is {payload}", payload + " ")]:
        math_task.grade(response, _math_problem(gold))
        gsm8k.grade(f"#### {payload}", _gsm8k_problem(gold))
    math_task.grade_batch([f"\\boxed{{{payload}}}"] * 3, [_math_problem(g) for g in ["1", "y", payload[::-1]]],
                          num_workers=2)
    symbolic.get_pool(1).check_many([(payload, "x"), (payload, payload + "+0")])
    symbolic.get_pool(1).check_many([(f"({payload})-(x)", payload, "x"), (payload, payload, payload)], check="vineppo")
    assert not marker.exists()


PATHOLOGICAL = [
    ("\\boxed{9^{9^{9^{9}}}}", "1"),
    ("\\boxed{99^{99^{99}}}", "3"),
    ("\\boxed{2^{100000000}}", "4"),
    ("\\boxed{" + "1" * 100_000 + "}", "1"),
    ("\\boxed{" + "x+" * 50_000 + "1}", "x"),
    ("\\boxed{" + "{" * 5_000 + "1" + "}" * 5_000 + "}", "1"),
    ("\\boxed{" + "\\frac{" * 2_000 + "1" + "}{2}" * 2_000 + "}", "0"),
    ("\\boxed{(x+1)^{200}}", "(x+1)^{199}(x+2)"),
    ("\\boxed{\\frac{1}{0}}", "1"),
    ("x" * 100_000, "5"),
    ("\\boxed{" * 20_000, "5"),
    ("\\boxed{" + "(0," * 3_000 + "1,2" + ")" * 3_000 + "}", "(0," * 3_000 + "1,3" + ")" * 3_000),
    ("\\boxed{" + "[" * 3_000 + "1" + "]" * 3_000 + "}", "[" * 3_000 + "2" + "]" * 3_000),
    ("\\boxed{(9^9)^9^9}", "2"),
    ("\\boxed{((99!)!)!}", "3"),
    ("\\boxed{" + "(" * 400 + "1" + ")" * 400 + "}", "2"),
    ("\\boxed{" + ",," * 20_000 + "x}", "1"),
    ("\\boxed{" + "\\text{" * 3_000 + "}", "1"),
]


@pytest.mark.parametrize("grader", GRADERS)
@pytest.mark.parametrize("response,gold", PATHOLOGICAL, ids=range(len(PATHOLOGICAL)))
def test_pathological_inputs_return_quickly_as_incorrect(response, gold, grader):
    math_task = get_task("math", grader=grader)
    start = time.monotonic()
    assert math_task.grade(response, _math_problem(gold)) == 0.0
    assert time.monotonic() - start < TIME_BOUND
    # the grading machinery survives: a real symbolic equivalence still works afterwards
    assert math_task.grade("\\boxed{2\\sqrt{2}}", _math_problem("\\sqrt{8}")) == 1.0


def test_slow_symbolic_work_is_cut_by_the_timeout():
    pool = symbolic.SymbolicPool(num_workers=1, timeout=0.5)
    try:
        pool.check_many([("1", "1")])  # start the worker outside the timed section
        start = time.monotonic()
        heavy = "\\frac{(x+1)^{150}-(x-1)^{150}}{x^{3}+1}"
        assert pool.check_many([(heavy, "x^{2}+2"), ("x+1", "1+x")]) == [False, True]
        heavy_text = "((x+1)**150-(x-1)**150)/(x**3+1)"
        jobs = [(f"({heavy_text})-(x**2+2)", heavy_text, "x**2+2"), ("(x+1)-(1+x)", "x+1", "1+x")]
        assert pool.check_many(jobs, check="vineppo") == [False, True]
        assert time.monotonic() - start < 2 * TIME_BOUND
    finally:
        pool.close()


@pytest.mark.parametrize("grader", GRADERS)
def test_pathological_batch_is_bounded(grader):
    math_task = get_task("math", grader=grader)
    responses = [r for r, _ in PATHOLOGICAL] + ["\\boxed{\\frac{1}{2}}"] * 50
    problems = [_math_problem(g) for _, g in PATHOLOGICAL] + [_math_problem("0.5")] * 50
    start = time.monotonic()
    rewards = math_task.grade_batch(responses, problems, num_workers=2)
    assert rewards.tolist() == [0.0] * len(PATHOLOGICAL) + [1.0] * 50
    assert time.monotonic() - start < 2 * TIME_BOUND


@pytest.mark.parametrize("grader", GRADERS)
def test_gsm8k_grader_bounded_on_huge_input(grader):
    gsm8k = get_task("gsm8k", grader=grader)
    start = time.monotonic()
    assert gsm8k.grade("#### " + "9" * 100_000, _gsm8k_problem("9")) == 0.0
    assert gsm8k.grade("####" * 50_000, _gsm8k_problem("1")) == 0.0
    assert gsm8k.grade("1" * 1_000_000 + "\n#### 1", _gsm8k_problem("1")) == 0.0  # oversized: refused
    assert time.monotonic() - start < 1.0


def test_oversized_math_responses_are_refused():
    gold = _math_problem("1")
    for grader in GRADERS:
        task = get_task("math", grader=grader)
        assert task.grade("x" * 200_000 + "\\boxed{1}", gold) == 0.0
        assert task.grade("x" * 1_000 + "\\boxed{1}", gold) == 1.0


def test_worker_processes_are_separate():
    pool = symbolic.get_pool(1)
    pool.check_many([("x", "x+0")])
    pids = pool.worker_pids()
    assert pids and os.getpid() not in pids
