"""The jsonl task (no Python) and explicit data files: disjoint splits (a carved-out validation
leaves train, also in the GSM8K and MATH loaders), hold-out sizes checked before anything loads,
the answer extractors, graders and step rules against hand-worked expectations."""
import json

import pytest

from vinejax.tasks import TaskError, get_task, gsm8k, math_steps
from vinejax.tasks.data import DataError


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def word_problems(n, offset=0):
    return [{"q": f"Tom has {i} apples and buys {i + 1} more. How many?", "a": f"{2 * i + 1}",
             "sol": f"{i} + {i + 1} = {2 * i + 1}\n#### {2 * i + 1}"} for i in range(offset, offset + n)]


def test_carved_validation_leaves_train_and_splits_are_disjoint(tmp_path):
    train = write(tmp_path / "train.jsonl", word_problems(50))
    test = write(tmp_path / "test.jsonl", word_problems(10, offset=100))
    task = get_task("jsonl", train_file=train, test_file=test, num_validation=10, question_field="q",
                    answer_field="a", solution_field="sol")
    splits = {s: task.load_split(s) for s in ("train", "validation", "test")}
    assert [len(v) for v in splits.values()] == [40, 10, 10]
    texts = {s: {p.problem for p in v} for s, v in splits.items()}
    assert not texts["train"] & texts["validation"] and not texts["train"] & texts["test"]
    assert texts["train"] | texts["validation"] == {r["q"] for r in word_problems(50)}
    p = splits["test"][0]
    assert p.answer == "201" and p.solution.endswith("#### 201")
    # the same seed carves the same records
    again = get_task("jsonl", train_file=train, num_validation=10, question_field="q", answer_field="a")
    assert [p.problem for p in again.load_split("validation")] == [p.problem for p in splits["validation"]]


@pytest.mark.parametrize("name", ["gsm8k", "math"])
def test_data_files_carve_validation_out_of_train_without_a_leak(tmp_path, name):
    """The leak of the GSM8K and MATH loaders' data_files path: validation was a subset of the
    train file, and train was the whole file."""
    if name == "gsm8k":
        records = [{"question": r["q"], "answer": r["sol"]} for r in word_problems(50)]
    else:
        records = [{"problem": r["q"], "solution": f"So \\boxed{{{r['a']}}}."} for r in word_problems(50)]
    files = {"train": write(tmp_path / "train.jsonl", records)}
    task = get_task(name, data_files=files, num_validation=10)
    train, validation = task.load_split("train"), task.load_split("validation")
    assert len(train) == 40 and len(validation) == 10
    assert not {p.problem for p in train} & {p.problem for p in validation}
    # an explicit validation file: train is the whole train file
    files["validation"] = write(tmp_path / "val.jsonl", records[:5])
    assert len(get_task(name, data_files=files).load_split("train")) == 50


@pytest.mark.parametrize("name,default", [("gsm8k", 373), ("math", 500), ("jsonl", None)])
def test_hold_out_size_is_checked_against_the_file_when_the_task_is_built(tmp_path, name, default):
    train = write(tmp_path / "train.jsonl", [{"question": "q", "answer": "#### 1", "problem": "p",
                                              "solution": "\\boxed{1}"}] * 50)
    options = ({"data_files": {"train": train}} if name != "jsonl"
               else {"train_file": train, "num_validation": 50})
    with pytest.raises(DataError) as info:
        get_task(name, **options)  # no split loaded, no model: the file is only counted
    message = str(info.value)
    assert "config key 'task.options.num_validation'" in message and "50 records" in message
    assert f"is {default or 50}" in message and "\n" not in message


@pytest.mark.parametrize("options,message", [
    ({"extract": "first"}, "'task.options.extract': 'first' is not one of gsm8k, boxed, last_number, regex"),
    ({"grader": "fuzzy"}, "'task.options.grader': 'fuzzy' is not one of numeric, math, exact"),
    ({"steps": "sentences"}, "'task.options.steps': 'sentences' is not one of"),
    ({"extract": "regex"}, "'task.options.answer_regex': is needed with extract=\"regex\""),
    ({"extract": "regex", "answer_regex": "(unclosed"}, "'task.options.answer_regex': not a regular expression"),
    ({"train_file": "/nope.jsonl"}, "data file not found: /nope.jsonl"),
    ({"vineppo_split": True}, "'task.options.vineppo_split' is not an option of task 'jsonl'; its options: "
                              "answer_field, answer_regex,"),
])
def test_jsonl_options_are_checked(tmp_path, options, message):
    train = write(tmp_path / "train.jsonl", word_problems(5))
    with pytest.raises((TaskError, DataError)) as info:
        get_task("jsonl", **({"train_file": train, "question_field": "q", "answer_field": "a"} | options))
    assert message in str(info.value)


@pytest.mark.parametrize("extract,grader,gold,response,reward", [
    ("gsm8k", "numeric", "1,000", "so 999 + 1\n#### 1000", 1.0),  # value equality, commas either side
    ("gsm8k", "numeric", "12", "#### 12.0", 1.0),
    ("gsm8k", "numeric", "12", "12", 0.0),  # no "####": no answer
    ("gsm8k", "exact", "1,000", "#### 1000", 0.0),  # exact strings only
    ("last_number", "numeric", "-3.5", "x is -7/2, i.e. -3.5.", 1.0),
    ("last_number", "numeric", "7", "7 apples, 8 pears", 0.0),  # the last number counts
    ("boxed", "math", "\\frac{1}{2}", "hence \\boxed{0.5}", 1.0),  # math equivalence
    ("boxed", "math", "\\sqrt{8}", "so $\\boxed{2\\sqrt{2}}$", 1.0),  # needs the sandboxed sympy check
    ("boxed", "math", "\\frac{1}{2}", "\\boxed{\\frac{1}{3}}", 0.0),
    ("boxed", "exact", "x+1", "\\boxed{ x+1 }", 1.0),
    ("regex", "exact", "B", "I pick (A)... no, final choice: (B)", 1.0),
])
def test_jsonl_extraction_and_graders(tmp_path, extract, grader, gold, response, reward):
    train = write(tmp_path / "train.jsonl", [{"question": "q", "answer": gold}])
    task = get_task("jsonl", train_file=train, extract=extract, grader=grader, answer_regex=r"\(([A-D])\)")
    problem = task.load_split("train")[0]
    assert problem.answer == gold  # the gold field holds no "####", box or match: taken as it is
    assert task.grade_batch([response], [problem], num_workers=1).tolist() == [reward]
    assert task.grade(response, problem) == reward
    assert task.answer(response, problem) == task.answer(response + " ", problem)  # the vote key


@pytest.mark.parametrize("steps,step_regex,text,expected", [
    ("newline", "", "a\nb\n\nc", ["a", "\nb", "\n", "\nc"]),
    ("blank_line", "", "a\nb\n\nc\n\n\nd", ["a\nb", "\n\nc", "\n\n\nd"]),
    ("regex", r"Step \d+:", "Step 1: x. Step 2: y.", ["Step 1: x. ", "Step 2: y."]),
])
def test_jsonl_step_rules(tmp_path, steps, step_regex, text, expected):
    train = write(tmp_path / "train.jsonl", [{"question": "q", "answer": "1"}])
    task = get_task("jsonl", train_file=train, steps=steps, step_regex=step_regex)
    out = task.split_steps(text)
    assert out == expected and "".join(out) == text


@pytest.mark.parametrize("rule,splitter", [("gsm8k", gsm8k.split_steps), ("math", math_steps.split_steps)])
def test_jsonl_official_splitters(tmp_path, rule, splitter):
    train = write(tmp_path / "train.jsonl", [{"question": "q", "answer": "1"}])
    text = "We add.\n3 + 4 = 7\n\nThen double: 14.\n#### 14"
    assert get_task("jsonl", train_file=train, steps=rule).split_steps(text) == splitter(text)


def test_jsonl_prompt_and_stop_strings(tmp_path):
    train = write(tmp_path / "train.jsonl", [{"question": "2+2?", "answer": "4"}])
    task = get_task("jsonl", train_file=train, prompt_template="Q: {problem}\nA:", stop_strings=["\nQ:"])
    assert task.prompt(task.load_split("train")[0].problem) == "Q: 2+2?\nA:" and task.stop_strings == ("\nQ:",)
