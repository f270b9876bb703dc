"""Tasks: everything VinePPO needs to know about a problem.

Each task module (``vinejax.tasks.gsm8k``, ``vinejax.tasks.math``, ``vinejax.tasks.arithmetic``)
exposes ``split_steps(response) -> list[str]`` (``"".join(steps) == response``; ``StepSplitError`` where
VinePPO's splitter fails and drops the episode),
``load_split(split, **options) -> list[Problem]`` and (gsm8k, math) ``to_problem(record)``, which
builds a ``Problem`` from a raw record of ``shared/data``. Graders are modules of their own with
``grade(response, problem) -> float`` (1.0 correct, 0.0 wrong/unfinished),
``grade_batch(responses, problems, num_workers=...) -> np.ndarray[float32]`` and
``answer(response, problem)`` (the extracted final answer, hashable: str, tuple or None; the
majority vote's candidates) (``GRADERS``):

- "vineppo" (default for gsm8k and math): the verdicts of VinePPO's official reward, quirks
  included (``gsm8k_grade_vineppo``, ``math_grade_vineppo``);
- "strict": true value/mathematical equivalence (``gsm8k_grade_strict``, ``math_grade_strict``;
  the arithmetic task's own exact grader).

The training loop uses the task-agnostic ``Task`` bundle (``vinejax.tasks.base``)::

    task = get_task("math", data_dir="../shared/data")   # or "gsm8k", "arithmetic"; grader="strict"
    problems = task.load_split("train")                  # list[Problem(problem, answer, solution, meta)]
    prompt = task.prompt(problems[0].problem)             # "[MATH_TASK] Problem:\\n...\\n\\nSolution:"
    rewards = task.grade_batch(responses, problems_per_response, num_workers=8)
    task.answer(responses[0], problems[0])                # "42", ("\\frac{1}{2}",) or None
    steps = task.split_steps(response)
    task.stop_strings                                     # ("\\n\\n\\nProblem:",)

Options given to ``get_task`` are ``grader`` (config ``task.options.grader``), loader options
(``data_dir`` for a directory laid out like ``shared/data`` with ``vineppo_splits``;
``data_files={split: path}``; hub names; ``seed``; for arithmetic the ``ArithmeticConfig`` fields and ``num_problems``) plus ``prompt_template`` and
``stop_strings``. ``vinejax.tasks.steps.step_token_starts`` maps steps to token indices
(``token_char_offsets`` gives the character spans of sampled token ids), and
``vinejax.tasks.char_tokenizer`` builds the character-level tokenizer for the arithmetic task.
"""
from __future__ import annotations

import importlib

from vinejax.tasks.base import DEFAULT_PROMPT_TEMPLATE, DEFAULT_STOP_STRINGS, Problem, StepSplitError, Task

ARITHMETIC_PROMPT_TEMPLATE = "{problem}\n"
ARITHMETIC_STOP_STRINGS = ("\n\n",)
KNOWN_TASKS = ("gsm8k", "math", "arithmetic")
GRADERS = {  # task -> grader name -> module with grade() and grade_batch(); the first is the default
    "gsm8k": {"vineppo": "vinejax.tasks.gsm8k_grade_vineppo", "strict": "vinejax.tasks.gsm8k_grade_strict"},
    "math": {"vineppo": "vinejax.tasks.math_grade_vineppo", "strict": "vinejax.tasks.math_grade_strict"},
    "arithmetic": {"strict": "vinejax.tasks.arithmetic", "vineppo": "vinejax.tasks.gsm8k_grade_vineppo"},
}


def get_task(name: str, grader: str | None = None, **options) -> Task:
    """The ``Task`` called ``name`` ("gsm8k", "math" or "arithmetic") graded by ``grader``
    ("vineppo" or "strict"; default: the first in ``GRADERS[name]``); options as in the module docstring."""
    if name not in KNOWN_TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(KNOWN_TASKS)}")
    grader = grader or next(iter(GRADERS[name]))
    if grader not in GRADERS[name]:
        raise ValueError(f"unknown grader {grader!r} for task {name!r}; known graders: {', '.join(GRADERS[name])}")
    module = importlib.import_module(f"vinejax.tasks.{name}")
    grading = importlib.import_module(GRADERS[name][grader])
    is_arithmetic = name == "arithmetic"
    template = options.pop("prompt_template",
                           ARITHMETIC_PROMPT_TEMPLATE if is_arithmetic else DEFAULT_PROMPT_TEMPLATE)
    stops = tuple(options.pop("stop_strings",
                              ARITHMETIC_STOP_STRINGS if is_arithmetic else DEFAULT_STOP_STRINGS))
    return Task(name=name, grade=grading.grade, grade_batch=grading.grade_batch,
                split_steps=module.split_steps, loader=module.load_split,
                prompt_template=template, stop_strings=stops, options=options, grader=grader,
                answer=grading.answer)


__all__ = ["Problem", "StepSplitError", "Task", "get_task", "KNOWN_TASKS", "GRADERS"]
