"""Grading the real GSM8K / MATH gold solutions (skipped when ../shared/data is absent)."""
import json
import random

import pytest

from vinejax.tasks import gsm8k, math as math_task
from vinejax.tasks.math_answer import normalize
from vinejax.tasks.math_equiv import parse_number

pytestmark = pytest.mark.data


def _jsonl(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_gsm8k_test_gold_solutions_all_grade_correct(shared_data):
    problems = gsm8k.load_split("test", data_dir=str(shared_data))
    assert len(problems) == 1319
    rewards = gsm8k.grade_batch([p.solution for p in problems], [p.answer for p in problems])
    assert rewards.tolist() == [1.0] * 1319
    # the SFT target has no calculator annotations and ends with "#### answer"
    assert all("<<" not in p.solution and p.solution.rstrip().endswith(p.answer) for p in problems)


def test_gsm8k_shuffled_pairs_fail_unless_answers_equal(shared_data):
    problems = gsm8k.load_split("test", data_dir=str(shared_data))
    order = list(range(len(problems)))
    random.Random(0).shuffle(order)
    other = [problems[i].answer for i in order]
    rewards = gsm8k.grade_batch([p.solution for p in problems], other)
    truly_equal = [float(p.answer.replace(",", "")) == float(o.replace(",", "")) for p, o in zip(problems, other)]
    assert rewards.tolist() == [float(e) for e in truly_equal]
    assert sum(truly_equal) < 30


def test_math500_gold_solutions_grade_correct(shared_data):
    problems = math_task.load_split("test", data_dir=str(shared_data))
    assert len(problems) == 500
    rewards = math_task.grade_batch([p.solution for p in problems], [p.answer for p in problems], num_workers=2)
    assert rewards.mean() >= 0.995


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
    other = [problems[i].answer for i in order]
    rewards = math_task.grade_batch([p.solution for p in problems], other, num_workers=2)
    expected = [float(_really_equal(p.answer, o)) for p, o in zip(problems, other)]
    assert rewards.tolist() == expected
    assert 0 < sum(expected) < 25


@pytest.mark.slow
def test_math_train_shuffled_pairs_fail_unless_answers_equal(shared_data):
    records = _jsonl(shared_data / "math" / "train.jsonl")
    order = list(range(len(records)))
    random.Random(5).shuffle(order)
    other = [records[i]["answer"] for i in order]
    rewards = math_task.grade_batch([r["solution"] for r in records], other, num_workers=2)
    expected = [float(_really_equal(r["answer"], o)) for r, o in zip(records, other)]
    assert rewards.tolist() == expected


def test_all_12000_math_train_gold_solutions(shared_data):
    records = _jsonl(shared_data / "math" / "train.jsonl")
    assert len(records) == 12000
    rewards = math_task.grade_batch([r["solution"] for r in records], [r["answer"] for r in records],
                                    num_workers=2)
    assert rewards.mean() >= 0.99
    # the only exceptions: the two MATH solutions with an empty \boxed{} (an empty answer never counts)
    failures = {r["unique_id"] for r, reward in zip(records, rewards) if reward < 1}
    assert failures == {"train/number_theory/7115.json", "train/number_theory/7117.json"}


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
