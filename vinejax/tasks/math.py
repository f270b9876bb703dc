"""MATH (PRM800K split): loading, SFT targets (``\\boxed{}`` solutions) and steps.

The graders live in ``math_grade_vineppo`` (the official reward, the default) and
``math_grade_strict`` (true equivalence); ``vinejax.tasks.get_task`` picks one.
"""
from __future__ import annotations

import os

from vinejax.tasks import data
from vinejax.tasks.base import Problem
from vinejax.tasks.math_answer import find_boxed
from vinejax.tasks.math_steps import split_steps  # noqa: F401  (public API of this task)

HUB_TEST_NAME = "HuggingFaceH4/MATH-500"
NUM_VALIDATION = 500
_FIELDS = ("problem", "solution")


def to_problem(record: dict, where: str = "MATH record") -> Problem:
    """Turn a PRM800K-style record (problem, solution[, answer]) into a ``Problem``."""
    answer = record.get("answer")
    if answer is None:
        answer = find_boxed(record["solution"])
        if answer is None:
            raise data.DataError(f"{where}: no field 'answer' and no \\boxed{{}} in field 'solution'")
    meta = {k: record[k] for k in ("subject", "level", "unique_id", "gold_solution_steps") if k in record}
    return Problem(problem=record["problem"], answer=answer.strip(), solution=record["solution"], meta=meta)


def _from_dir(split: str, data_dir: str, vineppo_splits: bool, seed: int, num_validation: int) -> list[dict]:
    if split == "test":
        return data.read_jsonl(os.path.join(data_dir, "math", "test.jsonl"), _FIELDS)
    if vineppo_splits and split == "validation":
        return data.read_jsonl(os.path.join(data_dir, "vineppo_splits", "math_validation.jsonl"), _FIELDS)
    records = data.read_jsonl(os.path.join(data_dir, "math", "train.jsonl"), _FIELDS + ("unique_id",))
    if not vineppo_splits:
        train, validation = data.seeded_split(records, num_validation, seed)
        return train if split == "train" else validation
    ids_path = os.path.join(data_dir, "vineppo_splits", "math_train_unique_ids.txt")
    if not os.path.isfile(ids_path):
        raise data.DataError(f"data file not found: {ids_path}")
    with open(ids_path, encoding="utf-8") as handle:
        wanted = {line.strip() for line in handle if line.strip()}
    return [r for r in records if r["unique_id"] in wanted]


HUB_OPTIONS = {"hub_test_name": HUB_TEST_NAME, "hub_train_name": None, "hub_config": None}
OPTIONS = ("data_dir", "data_files", "vineppo_splits", "seed", "num_validation") + tuple(HUB_OPTIONS)  # of load_split


def load_split(split: str, data_dir: str | None = None, data_files: dict | None = None,
               vineppo_splits: bool = True, seed: int = 42, num_validation: int = NUM_VALIDATION,
               **hub) -> list[Problem]:
    """Load a MATH split (train 11,500 / validation 500 / test MATH500) as ``Problem`` records.

    Sources, first match wins: ``data_files`` ({split: jsonl path}; without a validation file,
    validation is a seeded subset of ``num_validation`` train records, removed from train:
    `data.records_of_split`); ``data_dir`` laid out like ``shared/data`` (VinePPO's splits when
    ``vineppo_splits``); the Hub (``hub`` options, ``HUB_OPTIONS``): ``hub_test_name`` for test
    and ``hub_train_name`` (a dataset with PRM800K ``math_splits/train`` records) for
    train/validation, ``hub_config``.
    """
    data.check_split(split)
    if set(hub) - set(HUB_OPTIONS):
        raise TypeError(f"unknown MATH loader options {sorted(set(hub) - set(HUB_OPTIONS))}; known: {OPTIONS}")
    hub = HUB_OPTIONS | hub
    hub_test_name, hub_train_name, hub_config = hub["hub_test_name"], hub["hub_train_name"], hub["hub_config"]
    if data_files:
        read = lambda path: data.read_jsonl(path, _FIELDS)
        records = data.records_of_split(data_files, split, num_validation, seed, read)
    elif data_dir is not None:
        records = _from_dir(split, data_dir, vineppo_splits, seed, num_validation)
    elif split == "test":
        records = data.load_hub(hub_test_name, hub_config, "test", _FIELDS)
    else:
        if hub_train_name is None:
            raise ValueError("MATH train/validation from the Hub needs hub_train_name: a dataset "
                             "holding PRM800K math_splits/train records (problem, solution, answer)")
        train, validation = data.seeded_split(
            data.load_hub(hub_train_name, hub_config, "train", _FIELDS), num_validation, seed)
        records = train if split == "train" else validation
    return [to_problem(r) for r in records]
