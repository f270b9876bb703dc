"""MATH (PRM800K split): loading, SFT targets (``\\boxed{}`` solutions), grading and steps.

Grading: ``extract_answer`` (math_answer) -> ``equivalence`` fast paths (math_equiv) -> symbolic
check in sandboxed, time-limited worker processes (symbolic) only when the fast paths cannot
decide. ``grade_batch`` runs the fast paths for the whole batch first and sends only the
undecided pairs to ``num_workers`` symbolic workers in parallel.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from vinejax.tasks import data, symbolic
from vinejax.tasks.base import Problem
from vinejax.tasks.math_answer import extract_answer, find_boxed
from vinejax.tasks.math_equiv import equivalence
from vinejax.tasks.math_steps import split_steps  # noqa: F401  (public API of this task)

HUB_TEST_NAME = "HuggingFaceH4/MATH-500"
NUM_VALIDATION = 500
_FIELDS = ("problem", "solution")


def _verdict(response: str, answer: str):
    predicted = extract_answer(response)
    if not predicted or not predicted.strip():
        return False  # no answer, or an empty \boxed{}: never correct
    return equivalence(predicted, answer)


_SYMBOLIC_CACHE: dict[tuple[str, str], bool] = {}
_CACHE_LIMIT = 200_000


def _symbolic_results(pairs: list, num_workers: int, timeout: float) -> dict:
    """Symbolic verdicts for ``pairs``, cached (MC rollouts repeat the same answers a lot).
    A timeout is cached as "not equal" too."""
    refused = {p: False for p in pairs if not (symbolic.admissible(p[0]) and symbolic.admissible(p[1]))}
    pairs = [p for p in pairs if p not in refused]  # only small pairs reach the workers / the cache
    missing = [p for p in pairs if p not in _SYMBOLIC_CACHE]
    if missing:
        pool = symbolic.get_pool(num_workers)
        pool.timeout = timeout
        if len(_SYMBOLIC_CACHE) + len(missing) > _CACHE_LIMIT:
            _SYMBOLIC_CACHE.clear()
        _SYMBOLIC_CACHE.update(zip(missing, pool.check_many(missing)))
    return {**refused, **{p: _SYMBOLIC_CACHE[p] for p in pairs}}


def clear_cache() -> None:
    """Forget cached symbolic verdicts (benchmarks use it to measure cold grading)."""
    _SYMBOLIC_CACHE.clear()


def grade(response: str, answer: str, timeout: float = symbolic.DEFAULT_TIMEOUT) -> float:
    """1.0 when the final answer of ``response`` is equivalent to ``answer``, else 0.0."""
    verdict = _verdict(response, answer)
    if isinstance(verdict, bool):
        return float(verdict)
    return float(all(_symbolic_results(verdict, 1, timeout).values()))


def grade_batch(responses: Sequence[str], answers: Sequence[str], num_workers: int | None = None,
                timeout: float = symbolic.DEFAULT_TIMEOUT) -> np.ndarray:
    """Grade many pairs: fast paths in-process, undecided pairs on ``num_workers`` sympy workers
    (default: min(8, cpu count)). Not thread-safe: call it from one thread."""
    if len(responses) != len(answers):
        raise ValueError(f"{len(responses)} responses but {len(answers)} answers")
    verdicts = [_verdict(r, a) for r, a in zip(responses, answers)]
    pending = sorted({pair for v in verdicts if not isinstance(v, bool) for pair in v})
    workers = num_workers or min(8, os.cpu_count() or 1)
    decided = _symbolic_results(pending, workers, timeout) if pending else {}
    rewards = [v if isinstance(v, bool) else all(decided[p] for p in v) for v in verdicts]
    return np.asarray(rewards, dtype=np.float32)


def to_problem(record: dict, where: str = "MATH record") -> Problem:
    """Turn a PRM800K-style record (problem, solution[, answer]) into a ``Problem``."""
    answer = record.get("answer")
    if answer is None:
        answer = find_boxed(record["solution"])
        if answer is None:
            raise data.DataError(f"{where}: no field 'answer' and no \\boxed{{}} in field 'solution'")
    meta = {k: record[k] for k in ("subject", "level", "unique_id", "gold_solution_steps") if k in record}
    return Problem(problem=record["problem"], answer=answer.strip(), solution=record["solution"], meta=meta)


def _from_dir(split: str, data_dir: str, vineppo_splits: bool, seed: int) -> list[dict]:
    if split == "test":
        return data.read_jsonl(os.path.join(data_dir, "math", "test.jsonl"), _FIELDS)
    if vineppo_splits and split == "validation":
        return data.read_jsonl(os.path.join(data_dir, "vineppo_splits", "math_validation.jsonl"), _FIELDS)
    records = data.read_jsonl(os.path.join(data_dir, "math", "train.jsonl"), _FIELDS + ("unique_id",))
    if not vineppo_splits:
        train, validation = data.seeded_split(records, NUM_VALIDATION, seed)
        return train if split == "train" else validation
    ids_path = os.path.join(data_dir, "vineppo_splits", "math_train_unique_ids.txt")
    if not os.path.isfile(ids_path):
        raise data.DataError(f"data file not found: {ids_path}")
    with open(ids_path, encoding="utf-8") as handle:
        wanted = {line.strip() for line in handle if line.strip()}
    return [r for r in records if r["unique_id"] in wanted]


def load_split(split: str, data_dir: str | None = None, data_files: dict | None = None,
               vineppo_splits: bool = True, seed: int = 42, hub_test_name: str = HUB_TEST_NAME,
               hub_train_name: str | None = None, hub_config: str | None = None, **unused) -> list[Problem]:
    """Load a MATH split (train 11,500 / validation 500 / test MATH500) as ``Problem`` records.

    Sources, first match wins: ``data_files`` ({split: jsonl path}; validation falls back to a
    seeded 500-record split of the train file); ``data_dir`` laid out like ``shared/data``
    (VinePPO's splits when ``vineppo_splits``); the Hub: ``hub_test_name`` for test and
    ``hub_train_name`` (a dataset with PRM800K ``math_splits/train`` records) for train/validation.
    """
    data.check_split(split)
    if data_files:
        if split in data_files:
            records = data.read_jsonl(data_files[split], _FIELDS)
        elif split in ("train", "validation") and "train" in data_files:
            train, validation = data.seeded_split(
                data.read_jsonl(data_files["train"], _FIELDS), NUM_VALIDATION, seed)
            records = train if split == "train" else validation
        else:
            raise data.DataError(f"no data file for split {split!r} in data_files {sorted(data_files)}")
    elif data_dir is not None:
        records = _from_dir(split, data_dir, vineppo_splits, seed)
    elif split == "test":
        records = data.load_hub(hub_test_name, hub_config, "test", _FIELDS)
    else:
        if hub_train_name is None:
            raise ValueError("MATH train/validation from the Hub needs hub_train_name: a dataset "
                             "holding PRM800K math_splits/train records (problem, solution, answer)")
        train, validation = data.seeded_split(
            data.load_hub(hub_train_name, hub_config, "train", _FIELDS), NUM_VALIDATION, seed)
        records = train if split == "train" else validation
    return [to_problem(r) for r in records]
