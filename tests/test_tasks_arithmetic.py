"""Synthetic arithmetic task, char tokenizer and the task registry."""
import re

import numpy as np
import pytest
from ml_collections import ConfigDict
from transformers import AutoTokenizer

from vinejax.tasks import KNOWN_TASKS, Problem, arithmetic, get_task
from vinejax.tasks.char_tokenizer import save_char_tokenizer


def _evaluate_by_hand(expression: str) -> int:
    """Independent reference: reduce innermost 'a op b' groups with integer arithmetic."""
    text = expression
    while True:
        match = re.search(r"\((\d+)([-+*])(\d+)\)", text) or re.fullmatch(r"(-?\d+)([-+*])(\d+)", text)
        if not match:
            return int(text)
        a, op, b = int(match.group(1)), match.group(2), int(match.group(3))
        value = a + b if op == "+" else a - b if op == "-" else a * b
        text = text[:match.start()] + str(value) + text[match.end():]


def test_generator_is_deterministic_and_answers_are_right():
    first = arithmetic.load_split("train", 300, seed=7)
    assert first == arithmetic.load_split("train", 300, seed=7)
    assert first != arithmetic.load_split("train", 300, seed=8)
    assert arithmetic.make_problem(123, "train", arithmetic.ArithmeticConfig(seed=7)) == \
        arithmetic.load_split("train", 124, seed=7)[123]
    for problem in first:
        assert int(problem.answer) == _evaluate_by_hand(problem.problem)
        assert arithmetic.grade(problem.solution, problem) == 1.0
        assert len(problem.solution.split("\n")) == 5  # 4 operations + "#### answer"
        assert len(problem.problem) + len(problem.solution) <= 80
        assert set(problem.problem + problem.solution) <= set(arithmetic.ALPHABET)
    operators = "".join(p.problem for p in first)
    assert operators.count("*") > 150  # multiplications (the hard steps) are common


def test_splits_are_disjoint():
    train = {p.problem for p in arithmetic.load_split("train", 4000)}
    validation = {p.problem for p in arithmetic.load_split("validation", 500)}
    test = {p.problem for p in arithmetic.load_split("test", 500)}
    assert len(test) > 490 and len(validation) > 490
    assert not train & test and not train & validation and not validation & test


def test_noisy_demonstrations_have_the_configured_slip_rate():
    problems = arithmetic.load_split("train", 3000, slip_rate=0.15, num_operations=4)
    intermediate_lines = 3 * len(problems)
    slipped = 0
    for problem in problems:
        lines = problem.solution.split("\n")[:-1]
        gold_lines = problem.meta["gold_solution"].split("\n")[:-1]
        wrong_results = []
        for index, line in enumerate(lines):
            left, result = line.split("=")
            if _evaluate_by_hand(left) != int(result):
                wrong_results.append(index)
        assert wrong_results == problem.meta["slips"]
        assert 3 not in wrong_results  # the last operation is never a slip
        slipped += len(wrong_results)
        if wrong_results:
            assert arithmetic.grade(problem.solution, problem) == 0.0
            # the slip propagates: the next line starts from the wrong value
            first = wrong_results[0]
            assert lines[first + 1].startswith(lines[first].split("=")[1])
            assert lines[:first] == gold_lines[:first]
        else:
            assert problem.solution == problem.meta["gold_solution"]
    assert abs(slipped / intermediate_lines - 0.15) < 0.02


def test_grading_and_steps():
    three = Problem(problem="1+2", answer="3", solution="1+2=3\n#### 3")
    assert arithmetic.grade("1+2=3\n#### 3", three) == 1.0
    assert arithmetic.grade("1+2=4\n#### 4", three) == 0.0
    assert arithmetic.grade("1+2=3\n", three) == 0.0  # unfinished
    assert arithmetic.grade_batch(["#### 3", "#### 03", "####3 "], [three] * 3).tolist() == [1.0] * 3
    with pytest.raises(TypeError, match="graders take Problem records, got str"):
        arithmetic.grade_batch(["#### 3"], ["3"])
    with pytest.raises(ValueError, match="2 responses but 1 problems"):
        arithmetic.grade_batch(["#### 3", "#### 3"], [three])
    # GSM8K's rules: each "\n" starts a step, "\n#### answer" joins the last one
    assert arithmetic.split_steps("1+2=3\n3*4=12\n#### 12") == ["1+2=3", "\n3*4=12\n#### 12"]


def test_char_tokenizer_round_trips_through_auto_tokenizer(tmp_path):
    save_char_tokenizer(tmp_path / "tok", arithmetic.ALPHABET)
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert len(tokenizer) < 128
    problem = arithmetic.load_split("test", 1)[0]
    text = problem.problem + "\n" + problem.solution
    encoding = tokenizer(text, return_offsets_mapping=True)
    assert encoding["input_ids"][0] == tokenizer.bos_token_id
    assert len(encoding["input_ids"]) == len(text) + 1
    assert encoding["offset_mapping"][1:] == [(i, i + 1) for i in range(len(text))]
    assert tokenizer.decode(encoding["input_ids"], skip_special_tokens=True) == text
    ids = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id}
    assert len(ids) == 4 and None not in ids
    assert tokenizer("é", add_special_tokens=False)["input_ids"] == [tokenizer.unk_token_id]


def test_registry():
    assert set(KNOWN_TASKS) == {"gsm8k", "math", "arithmetic", "jsonl"}
    with pytest.raises(ValueError, match="gsm8k, math, arithmetic, jsonl"):
        get_task("mmlu")
    math = get_task("math")
    assert math.prompt("What is $1+1$?") == "[MATH_TASK] Problem:\nWhat is $1+1$?\n\nSolution:"
    assert math.stop_strings == ("\n\n\nProblem:",)
    assert get_task("gsm8k", prompt_template="Q: {problem}\nA:").prompt("x") == "Q: x\nA:"
    task = get_task("arithmetic", num_operations=3)
    problems = task.load_split("validation", ConfigDict({"num_problems": 5}))
    assert len(problems) == 5 and all(p.solution.count("\n") == 3 for p in problems)
    assert len(task.prompt(problems[0].problem)) < 20
    rewards = task.grade_batch([p.solution for p in problems], problems)
    assert isinstance(rewards, np.ndarray) and rewards.dtype == np.float32 and rewards.tolist() == [1.0] * 5
    assert task.grader == "strict" and get_task("math").grader == get_task("gsm8k").grader == "vineppo"
    assert get_task("math", grader="strict").grader == "strict"
    with pytest.raises(ValueError, match="'task.options.grader' is 'official': task 'math' has the graders vineppo"):
        get_task("math", grader="official")
