"""GSM8K: loading (hub / local files / VinePPO splits), SFT targets, answers and line steps.

The graders live in ``gsm8k_grade_vineppo`` (the official reward, the default) and
``gsm8k_grade_strict`` (value equality); ``vinejax.tasks.get_task`` picks one.
"""
from __future__ import annotations

import os
import re

from vinejax.tasks import data
from vinejax.tasks.base import Problem

HUB_NAME = "openai/gsm8k"
HUB_CONFIG = "main"
NUM_VALIDATION = 373  # the paper holds out 373 of the 7,473 train records (7,100 remain)
_CALCULATOR = re.compile(r"<<[^<>]*>>")
_FIELDS = ("question", "answer")


def strip_calculator(solution: str) -> str:
    """Remove ``<<a*b=c>>`` calculator annotations from a GSM8K solution."""
    return _CALCULATOR.sub("", solution)


def extract_answer(text: str) -> str | None:
    """Return the text after the last ``####`` (stripped), or None when there is none."""
    if "####" not in text:
        return None
    return text.rsplit("####", 1)[1].strip()


def split_steps(response: str) -> list[str]:
    """Split by lines (each step keeps its trailing newline).

    Leading blank lines merge into the first step, blank lines into the step before them, and
    the final ``#### answer`` line into the last step, so ``"".join(steps) == response``.
    """
    lines = _split_lines(response)
    steps: list[str] = []
    pending = ""  # leading blank lines waiting for the first real line
    for line in lines:
        is_blank = not line.strip()
        is_final_answer = line.lstrip().startswith("####")
        if steps and (is_blank or is_final_answer):
            steps[-1] += line
        elif is_blank:
            pending += line
        else:
            steps.append(pending + line)
            pending = ""
    if pending:
        steps.append(pending)
    return steps


def _split_lines(response: str) -> list[str]:
    # Only "\n" separates lines (str.splitlines would also break at \r, \u2028, ...).
    parts = response.split("\n")
    return [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def to_problem(record: dict) -> Problem:
    """Turn a GSM8K record (``question``, ``answer``) into a ``Problem``."""
    gold = extract_answer(record["answer"])
    if gold is None:
        raise data.DataError(f"GSM8K record has no '####' in field 'answer': {record['answer'][:80]!r}")
    return Problem(problem=record["question"], answer=gold,
                   solution=strip_calculator(record["answer"]), meta={"raw_solution": record["answer"]})


def load_split(split: str, data_dir: str | None = None, data_files: dict | None = None,
               vineppo_splits: bool = True, seed: int = 42, num_validation: int = NUM_VALIDATION,
               hub_name: str = HUB_NAME, hub_config: str = HUB_CONFIG, **unused) -> list[Problem]:
    """Load a GSM8K split as ``Problem`` records.

    Sources, first match wins: ``data_files`` ({split: path}; validation/train fall back to a
    seeded split of ``data_files['train']``); ``data_dir`` laid out like ``shared/data``
    (``vineppo_splits/gsm8k_{split}.jsonl`` when ``vineppo_splits``, else a seeded split of
    ``gsm8k/train.jsonl``); otherwise the Hub dataset ``hub_name`` with the same seeded split.
    """
    data.check_split(split)
    if data_files:
        if split in data_files:
            return [to_problem(r) for r in data.read_jsonl(data_files[split], _FIELDS)]
        if split == "validation" and "train" in data_files:
            records = data.read_jsonl(data_files["train"], _FIELDS)
            return [to_problem(r) for r in data.seeded_split(records, num_validation, seed)[1]]
        raise data.DataError(f"no data file for split {split!r} in data_files {sorted(data_files)}")
    if data_dir is not None:
        if vineppo_splits:
            path = os.path.join(data_dir, "vineppo_splits", f"gsm8k_{split}.jsonl")
            return [to_problem(r) for r in data.read_jsonl(path, _FIELDS)]
        name = "test" if split == "test" else "train"
        records = data.read_jsonl(os.path.join(data_dir, "gsm8k", f"{name}.jsonl"), _FIELDS)
    else:
        records = data.load_hub(hub_name, hub_config, "test" if split == "test" else "train", _FIELDS)
    if split != "test":
        train, validation = data.seeded_split(records, num_validation, seed)
        records = train if split == "train" else validation
    return [to_problem(r) for r in records]
