"""Grading the real GSM8K / MATH gold solutions (skipped when ../shared/data is absent)."""
import json
import random

import pytest

from vinejax.tasks import get_task, gsm8k
from vinejax.tasks import math as math_task
from vinejax.tasks.math_answer import normalize
from vinejax.tasks.math_equiv import parse_number

pytestmark = pytest.mark.data
GSM8K_COMMA_GOLDS = 14  # GSM8K test golds written with a thousands separator ("1,000")


def _jsonl(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_gsm8k_test_gold_solutions_grade_correct(shared_data):
    problems = gsm8k.load_split("test", data_dir=str(shared_data))
    assert len(problems) == 1319
    strict = get_task("gsm8k", grader="strict").grade_batch([p.solution for p in problems], problems)
    assert strict.tolist() == [1.0] * 1319
    # the official reward never credits a gold written with a thousands separator
    vineppo = get_task("gsm8k", grader="vineppo").grade_batch([p.solution for p in problems], problems)
    assert vineppo.tolist() == [float("," not in p.answer) for p in problems]
    assert int(1319 - vineppo.sum()) == GSM8K_COMMA_GOLDS
    # the SFT target has no calculator annotations and ends with "#### answer"
    assert all("<<" not in p.solution and p.solution.rstrip().endswith(p.answer) for p in problems)


def test_gsm8k_shuffled_pairs_fail_unless_answers_equal(shared_data):
    problems = gsm8k.load_split("test", data_dir=str(shared_data))
    order = list(range(len(problems)))
    random.Random(0).shuffle(order)
    other = [problems[i] for i in order]
    responses = [p.solution for p in problems]
    rewards = get_task("gsm8k", grader="strict").grade_batch(responses, other)
    truly_equal = [float(p.answer.replace(",", "")) == float(o.answer.replace(",", "")) for p, o in zip(problems, other)]
    assert rewards.tolist() == [float(e) for e in truly_equal]
    assert sum(truly_equal) < 30
    rewards = get_task("gsm8k", grader="vineppo").grade_batch(responses, other)
    same_text = [p.answer.replace(",", "") == o.answer for p, o in zip(problems, other)]
    assert rewards.tolist() == [float(e) for e in same_text]


def test_math500_gold_solutions_grade_correct(shared_data):
    problems = math_task.load_split("test", data_dir=str(shared_data))
    assert len(problems) == 500
    responses = [p.solution for p in problems]
    rewards = get_task("math", grader="strict").grade_batch(responses, problems, num_workers=2)
    assert rewards.mean() >= 0.995
    rewards = get_task("math", grader="vineppo").grade_batch(responses, problems, num_workers=2)
    assert rewards.tolist() == [1.0] * 500


def _really_equal(first: str, second: str) -> bool:
    """Reference: identical after normalisation, or the same plain number (a percentage also
    matches its fraction, e.g. 70% and 7/10, as in the paper's grader)."""
    a, b = normalize(first), normalize(second)
    if a == b:
        return True
    value_a, value_b = parse_number(a), parse_number(b)
    if value_a is None or value_b is None:
        return False
    scales = (1, 100, 0.01) if "%" in first + second else (1,)
    return any(abs(value_a * scale - value_b) < 1e-9 for scale in scales)


def test_math500_shuffled_pairs_fail_unless_answers_equal(shared_data):
    problems = math_task.load_split("test", data_dir=str(shared_data))
    order = list(range(len(problems)))
    random.Random(1).shuffle(order)
    other = [problems[i] for i in order]
    rewards = get_task("math", grader="strict").grade_batch([p.solution for p in problems], other, num_workers=2)
    expected = [float(_really_equal(p.answer, o.answer)) for p, o in zip(problems, other)]
    assert rewards.tolist() == expected
    assert 0 < sum(expected) < 25


@pytest.mark.slow
def test_math_train_shuffled_pairs_fail_unless_answers_equal(shared_data):
    records = _jsonl(shared_data / "math" / "train.jsonl")
    order = list(range(len(records)))
    random.Random(5).shuffle(order)
    other = [math_task.to_problem(records[i]) for i in order]
    rewards = get_task("math", grader="strict").grade_batch([r["solution"] for r in records], other, num_workers=2)
    expected = [float(_really_equal(r["answer"], o.answer)) for r, o in zip(records, other)]
    assert rewards.tolist() == expected


def test_all_12000_math_train_gold_solutions(shared_data):
    records = _jsonl(shared_data / "math" / "train.jsonl")
    assert len(records) == 12000
    problems = [math_task.to_problem(r) for r in records]
    responses = [r["solution"] for r in records]
    rewards = get_task("math", grader="strict").grade_batch(responses, problems, num_workers=2)
    assert rewards.mean() >= 0.99
    # the only exceptions: the two MATH solutions with an empty \boxed{} (an empty answer never counts)
    failures = {r["unique_id"] for r, reward in zip(records, rewards) if reward < 1}
    assert failures == {"train/number_theory/7115.json", "train/number_theory/7117.json"}
    # officially every gold solution earns its own reward, empty boxes included
    rewards = get_task("math", grader="vineppo").grade_batch(responses, problems, num_workers=2)
    assert rewards.tolist() == [1.0] * 12000


def test_splits_have_the_paper_sizes(shared_data):
    sizes = {(name, split): len(task.load_split(split, data_dir=str(shared_data)))
             for name, task in (("gsm8k", gsm8k), ("math", math_task))
             for split in ("train", "validation", "test")}
    assert sizes == {("gsm8k", "train"): 7100, ("gsm8k", "validation"): 373, ("gsm8k", "test"): 1319,
                     ("math", "train"): 11500, ("math", "validation"): 500, ("math", "test"): 500}


def test_seeded_gsm8k_split_from_raw_train_file(shared_data):
    files = {"train": str(shared_data / "gsm8k" / "train.jsonl")}
    validation = gsm8k.load_split("validation", data_files=files, seed=3)
    again = gsm8k.load_split("validation", data_files=files, seed=3)
    train = gsm8k.load_split("train", data_dir=str(shared_data), vineppo_splits=False, seed=3)
    assert len(validation) == 373 and validation == again
    assert len(train) == 7100
    assert not {p.problem for p in train} & {p.problem for p in validation}
