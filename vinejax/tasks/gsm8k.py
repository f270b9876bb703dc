"""GSM8K: loading (hub / local files / VinePPO splits), SFT targets, answers and line steps.

The graders live in ``gsm8k_grade_vineppo`` (the official reward, the default) and
``gsm8k_grade_strict`` (value equality); ``vinejax.tasks.get_task`` picks one.
"""
from __future__ import annotations

import os
import re

from vinejax.tasks import data
from vinejax.tasks.base import Problem, StepSplitError

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


ANSWER_PREFIX = "\n#### "  # VinePPO's step splitter keeps it and the answer in the last step


def split_steps(response: str) -> list[str]:
    """Split a response into line steps as VinePPO does (its GSM8K task, delimiter ``"\\n"``).

    Every ``"\\n"`` starts a new step. Blank lines before the first non-blank line join that
    line; a blank line in the middle is a step of its own; ``"\\n#### answer"`` (with whatever
    follows it) and the blank lines before it join the last non-blank line. ``"".join(steps) ==
    response``; an empty first step (a response of blank lines only) is left out. Raises
    ``StepSplitError`` when ``"\\n#### "`` occurs twice: VinePPO cannot split such a response and
    drops the episode.
    """
    body_and_answer = response.split(ANSWER_PREFIX)
    if len(body_and_answer) > 2:
        raise StepSplitError(f"{ANSWER_PREFIX!r} occurs {len(body_and_answer) - 1} times in the "
                             f"response ending {response[-60:]!r}")
    lines = body_and_answer[0].split("\n")
    steps = [lines[0]] + ["\n" + line for line in lines[1:]]
    first = next((i for i, step in enumerate(steps) if step.strip()), 0)
    steps = ["".join(steps[:first + 1])] + steps[first + 1:]
    if len(body_and_answer) == 2:
        last = max((i for i, step in enumerate(steps) if step.strip()), default=0)
        steps = steps[:last] + ["".join(steps[last:]) + ANSWER_PREFIX + body_and_answer[1]]
    return [step for step in steps if step]


def to_problem(record: dict) -> Problem:
    """Turn a GSM8K record (``question``, ``answer``) into a ``Problem``."""
    gold = extract_answer(record["answer"])
    if gold is None:
        raise data.DataError(f"GSM8K record has no '####' in field 'answer': {record['answer'][:80]!r}")
    return Problem(problem=record["question"], answer=gold,
                   solution=strip_calculator(record["answer"]), meta={"raw_solution": record["answer"]})


def load_split(split: str, data_dir: str | None = None, data_files: dict | None = None,
               vineppo_splits: bool = True, seed: int = 42, num_validation: int = NUM_VALIDATION,
               hub_name: str = HUB_NAME, hub_config: str = HUB_CONFIG) -> list[Problem]:
    """Load a GSM8K split as ``Problem`` records.

    Sources, first match wins: ``data_files`` ({split: path}; without a validation file,
    validation is a seeded subset of ``num_validation`` records of ``data_files['train']``,
    removed from train: `data.records_of_split`); ``data_dir`` laid out like ``shared/data``
    (``vineppo_splits/gsm8k_{split}.jsonl`` when ``vineppo_splits``, else a seeded split of
    ``gsm8k/train.jsonl``); otherwise the Hub dataset ``hub_name`` with the same seeded split.
    """
    data.check_split(split)
    if data_files:
        read = lambda path: data.read_jsonl(path, _FIELDS)
        return [to_problem(r) for r in data.records_of_split(data_files, split, num_validation, seed, read)]
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
