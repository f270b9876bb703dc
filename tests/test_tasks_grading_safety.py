"""Untrusted answers are never executed and every grade call is bounded in time."""
import os
import time

import pytest

from vinejax.tasks import gsm8k, math as math_task, symbolic

TIME_BOUND = 6.0  # seconds per call, including a possible worker restart on a loaded 2-core machine


def _python_payloads(marker):
    return [
        f"__import__('os').system('touch {marker}')",
        f"(lambda: __import__('os').system('touch {marker}'))()",
        f"().__class__.__base__.__subclasses__()",
        f"open('{marker}', 'w').write('x')",
        f"exec(\"open('{marker}','w')\")",
        f"eval(\"__import__('os').system('touch {marker}')\")",
    ]


@pytest.mark.parametrize("index", range(6))
def test_python_in_answers_is_never_executed(tmp_path, index):
    marker = tmp_path / "MARKER"
    payload = _python_payloads(marker)[index]
    for response, gold in [(f"\\boxed{{{payload}}}", "0"), (f"\\boxed{{{payload}}}", "x+1"),
                           ("\\boxed{x+1}", payload), (f"The answer is {payload}", payload + " ")]:
        math_task.grade(response, gold)
        gsm8k.grade(f"#### {payload}", gold)
    math_task.grade_batch([f"\\boxed{{{payload}}}"] * 3, ["1", "y", payload[::-1]], num_workers=2)
    symbolic.get_pool(1).check_many([(payload, "x"), (payload, payload + "+0")])
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
]


@pytest.mark.parametrize("response,gold", PATHOLOGICAL, ids=range(len(PATHOLOGICAL)))
def test_pathological_inputs_return_quickly_as_incorrect(response, gold):
    start = time.monotonic()
    assert math_task.grade(response, gold) == 0.0
    assert time.monotonic() - start < TIME_BOUND
    # the grading machinery survives: a real symbolic equivalence still works afterwards
    assert math_task.grade("\\boxed{2\\sqrt{2}}", "\\sqrt{8}") == 1.0


def test_slow_symbolic_work_is_cut_by_the_timeout():
    pool = symbolic.SymbolicPool(num_workers=1, timeout=0.5)
    try:
        pool.check_many([("1", "1")])  # start the worker outside the timed section
        start = time.monotonic()
        heavy = "\\frac{(x+1)^{150}-(x-1)^{150}}{x^{3}+1}"
        assert pool.check_many([(heavy, "x^{2}+2"), ("x+1", "1+x")]) == [False, True]
        assert time.monotonic() - start < TIME_BOUND
    finally:
        pool.close()


def test_pathological_batch_is_bounded():
    responses = [r for r, _ in PATHOLOGICAL] + ["\\boxed{\\frac{1}{2}}"] * 50
    answers = [g for _, g in PATHOLOGICAL] + ["0.5"] * 50
    start = time.monotonic()
    rewards = math_task.grade_batch(responses, answers, num_workers=2)
    assert rewards.tolist() == [0.0] * len(PATHOLOGICAL) + [1.0] * 50
    assert time.monotonic() - start < 2 * TIME_BOUND


def test_gsm8k_grader_bounded_on_huge_input():
    start = time.monotonic()
    assert gsm8k.grade("#### " + "9" * 100_000, "9") == 0.0
    assert gsm8k.grade("####" * 50_000, "1") == 0.0
    assert time.monotonic() - start < 1.0


def test_worker_processes_are_separate():
    pool = symbolic.get_pool(1)
    pool.check_many([("x", "x+0")])
    assert all(w.process.pid != os.getpid() and w.process.poll() is None for w in pool._workers)
