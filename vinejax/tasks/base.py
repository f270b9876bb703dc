"""The task-agnostic shape the training loop uses: ``Problem`` records and the ``Task`` bundle."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

DEFAULT_PROMPT_TEMPLATE = "[MATH_TASK] Problem:\n{problem}\n\nSolution:"
DEFAULT_STOP_STRINGS = ("\n\n\nProblem:",)


class StepSplitError(ValueError):
    """A response that VinePPO's step splitter rejects; the RL code drops its episode."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem: its text, its reference final answer and the SFT target solution."""

    problem: str
    answer: str
    solution: str
    meta: dict = dataclasses.field(default_factory=dict, compare=False)


@dataclasses.dataclass
class Task:
    """Everything the RL/SFT loop needs to know about a task, independent of which task it is.

    ``grade(response, answer) -> float`` gives 1.0 (correct) / 0.0 (wrong or unfinished);
    ``grade_batch(responses, answers, num_workers=...) -> np.ndarray[float32]``;
    ``split_steps(response) -> list[str]`` whose concatenation equals ``response`` (it raises
    ``StepSplitError`` where the official splitter fails; such an episode is dropped);
    ``load_split(split, cfg=None) -> list[Problem]``.
    """

    name: str
    grade: Callable[[str, str], float]
    grade_batch: Callable[..., np.ndarray]
    split_steps: Callable[[str], list]
    loader: Callable[..., list]
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    stop_strings: tuple = DEFAULT_STOP_STRINGS
    options: dict = dataclasses.field(default_factory=dict)

    def prompt(self, problem_text: str) -> str:
        """Format the zero-shot prompt for one problem text."""
        return self.prompt_template.format(problem=problem_text)

    def load_split(self, split: str, cfg: Any = None) -> list:
        """Load ``split`` ("train"/"validation"/"test") as a list of ``Problem``.

        ``cfg`` is a mapping (dict / ml_collections ConfigDict) of loader options that
        override the options given to ``get_task``.
        """
        merged = dict(self.options)
        if cfg is not None:
            merged.update(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg))
        return self.loader(split, **merged)


def grade_serially(grade: Callable[[str, str], float], responses: Sequence[str],
                   answers: Sequence[str]) -> np.ndarray:
    """Grade pairs one by one in this process; returns a float32 array."""
    if len(responses) != len(answers):
        raise ValueError(f"{len(responses)} responses but {len(answers)} answers")
    return np.asarray([grade(r, a) for r, a in zip(responses, answers)], dtype=np.float32)
