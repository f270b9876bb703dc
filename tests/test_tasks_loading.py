"""Loader errors name the file and the field; local jsonl files load through data_files."""
import json

import pytest

from vinejax.tasks import data, gsm8k
from vinejax.tasks import math as math_task
from vinejax.tasks.data import DataError


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match="nope.jsonl"):
        gsm8k.load_split("test", data_files={"test": str(missing)})


def test_missing_field_is_named(tmp_path):
    path = _write(tmp_path / "bad.jsonl", [{"question": "q", "answer": "a\n#### 1"}, {"question": "q2"}])
    with pytest.raises(DataError, match=r"bad.jsonl:2.*'answer'"):
        gsm8k.load_split("test", data_files={"test": path})
    path = _write(tmp_path / "bad_math.jsonl", [{"problem": "p", "answer": "1"}])
    with pytest.raises(DataError, match=r"bad_math.jsonl:1.*'solution'"):
        math_task.load_split("test", data_files={"test": path})


def test_local_files_become_problems(tmp_path):
    path = _write(tmp_path / "g.jsonl", [{"question": "What is 2+3?", "answer": "2+3=<<2+3=5>>5\n#### 5"}])
    (problem,) = gsm8k.load_split("test", data_files={"test": path})
    assert (problem.problem, problem.answer, problem.solution) == ("What is 2+3?", "5", "2+3=5\n#### 5")
    path = _write(tmp_path / "m.jsonl", [{"problem": "1+1?", "solution": "It is $\\boxed{2}$."}])
    (problem,) = math_task.load_split("test", data_files={"test": path})
    assert problem.answer == "2"


def test_unknown_split_rejected():
    with pytest.raises(ValueError, match="split"):
        gsm8k.load_split("dev", data_files={"dev": "x"})


def test_hub_path_calls_datasets_with_the_paper_names(monkeypatch):
    import datasets

    calls = []
    rows = [{"question": f"q{i}", "answer": f"s\n#### {i}"} for i in range(7473)]

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return rows if split == "train" else rows[:1319]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(data, "hub_reachable", lambda timeout=3.0: True)
    train = gsm8k.load_split("train", seed=0)
    validation = gsm8k.load_split("validation", seed=0)
    test = gsm8k.load_split("test")
    assert calls == [("openai/gsm8k", "main", "train")] * 2 + [("openai/gsm8k", "main", "test")]
    assert (len(train), len(validation), len(test)) == (7100, 373, 1319)
    assert not {p.problem for p in train} & {p.problem for p in validation}
    math_rows = [{"problem": "p", "solution": "$\\boxed{1}$", "answer": "1"}] * 500
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config=None, split=None: math_rows)
    assert len(math_task.load_split("test")) == 500
    with pytest.raises(ValueError, match="hub_train_name"):
        math_task.load_split("train")


def test_no_data_dir_and_no_hub_is_one_clear_error(monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine without network
    start = time.time()
    with pytest.raises(data.DataError, match="task.data_dir"):
        gsm8k.load_split("train")
    assert time.time() - start < 5  # no retries


def test_empty_split_file_names_the_file(tmp_path):
    empty = tmp_path / "gsm8k_train.jsonl"
    empty.write_text("\n")
    with pytest.raises(data.DataError, match="no records"):
        gsm8k.load_split("train", data_files={"train": str(empty)})
