"""The task-agnostic shape the training loop uses: ``Problem`` records and the ``Task`` bundle."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Hashable, Optional, Sequence

import numpy as np

from vinejax.errors import ConfigError

DEFAULT_PROMPT_TEMPLATE = "[MATH_TASK] Problem:\n{problem}\n\nSolution:"
DEFAULT_STOP_STRINGS = ("\n\n\nProblem:",)


class StepSplitError(ValueError):
    """A response that VinePPO's step splitter rejects; the RL code drops its episode."""


class TaskError(ConfigError):
    """A task the config names cannot be built: an unknown name, a plug-in that does not import
    or whose factory fails, an unknown option, a data file that does not fit the options."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem: its text, its reference final answer and the SFT target solution.

    Graders take the whole record: the "vineppo" MATH grader reads the gold answers from
    ``solution`` and looks at ``problem`` ("separated by commas"), the others use ``answer``.
    """

    problem: str
    answer: str
    solution: str
    meta: dict = dataclasses.field(default_factory=dict, compare=False)


@dataclasses.dataclass
class Task:
    """Everything the RL/SFT loop needs to know about a task, independent of which task it is
    (the public contract of built-in and plug-in tasks; fields added later have defaults).

    ``grade(response, problem) -> float`` gives the reward of a response to a ``Problem`` (1.0
    correct, 0.0 wrong or unfinished); ``grade_batch(responses, problems, num_workers=...) ->
    np.ndarray[float32]`` grades one response per problem record (repeat the record for several
    samples of one problem); None: each response is graded by ``grade`` in the sandboxed,
    time-limited workers (``tasks.sandbox``; a plug-in task always is), where NaN marks a grade
    that raised or took longer than ``grade_timeout`` seconds. ``grader`` names the grader in use;
    ``split_steps(response) -> list[str]`` whose concatenation equals ``response`` (it raises
    ``StepSplitError`` where the official splitter fails; such an episode is dropped; None: the
    task has no steps, and VinePPO cannot run on it); ``loader(split, **options) ->
    list[Problem]`` (``load_split``); ``prompt_template`` with a ``{problem}`` field;
    ``stop_strings`` end a response (removed, EOS appended); ``answer(response, problem)`` is the
    grader's extracted final answer, hashable (str, tuple or None): the candidates of the
    majority vote at evaluation (it runs in the main process: keep it cheap); ``chat_template``:
    prompts go through the tokenizer's chat template (config ``task.chat_template``);
    ``tokenizer() -> PreTrainedTokenizerFast``: the task's own tokenizer for tiny random models
    (used when neither ``model.hf_path``, ``model.init_from`` nor ``model.tokenizer_path`` gives one).
    """

    name: str
    grade: Callable[[str, Problem], float]
    grade_batch: Optional[Callable[..., np.ndarray]] = None
    split_steps: Optional[Callable[[str], list]] = None
    loader: Optional[Callable[..., list]] = None
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    stop_strings: tuple = DEFAULT_STOP_STRINGS
    options: dict = dataclasses.field(default_factory=dict)
    grader: str = ""
    answer: Optional[Callable[[str, Problem], Hashable]] = None
    grade_timeout: float = 2.0
    chat_template: bool = False
    tokenizer: Optional[Callable[[], Any]] = None

    def __post_init__(self):
        if self.grade_batch is None:  # grade each response in turn (a plug-in's: in the sandbox, see tasks.sandbox)
            self.grade_batch = functools.partial(_grade_each, self.grade)

    def prompt(self, problem_text: str) -> str:
        """Format the zero-shot prompt for one problem text."""
        return self.prompt_template.format(problem=problem_text)

    def load_split(self, split: str, cfg: Any = None) -> list:
        """Load ``split`` ("train"/"validation"/"test") as a list of ``Problem``.

        ``cfg`` is a mapping (dict / ml_collections ConfigDict) of loader options that
        override the options given to ``get_task``.
        """
        if self.loader is None:
            raise TaskError(f"task {self.name!r} has no loader: it cannot load its {split!r} split")
        merged = dict(self.options)
        if cfg is not None:
            merged.update(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg))
        return self.loader(split, **merged)


def check_batch(responses: Sequence[str], problems: Sequence[Problem]) -> None:
    """Raise ``ValueError`` unless there is one record per response, ``TypeError`` for a record
    that is not a ``Problem``."""
    if len(responses) != len(problems):
        raise ValueError(f"{len(responses)} responses but {len(problems)} problems")
    for problem in problems:
        if not isinstance(problem, Problem):
            raise TypeError(f"graders take Problem records, got {type(problem).__name__}: {problem!r:.80}")


def grade_serially(grade: Callable[[str, Problem], float], responses: Sequence[str],
                   problems: Sequence[Problem]) -> np.ndarray:
    """Grade (response, problem) pairs one by one in this process; returns a float32 array."""
    check_batch(responses, problems)
    return np.asarray([grade(r, p) for r, p in zip(responses, problems)], dtype=np.float32)


def _grade_each(grade: Callable[[str, Problem], float], responses: Sequence[str], problems: Sequence[Problem],
                num_workers: int | None = None) -> np.ndarray:
    del num_workers
    return grade_serially(grade, responses, problems)
