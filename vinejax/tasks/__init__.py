"""Tasks: everything VinePPO needs to know about a problem.

Each task module (``vinejax.tasks.gsm8k``, ``vinejax.tasks.math``, ``vinejax.tasks.arithmetic``)
exposes ``grade(response, answer) -> float`` (1.0 correct, 0.0 wrong/unfinished),
``grade_batch(responses, answers, num_workers=...) -> np.ndarray[float32]``,
``split_steps(response) -> list[str]`` (``"".join(steps) == response``; ``StepSplitError`` where
VinePPO's splitter fails and drops the episode) and
``load_split(split, **options) -> list[Problem]``.

The training loop uses the task-agnostic ``Task`` bundle (``vinejax.tasks.base``)::

    task = get_task("math", data_dir="../shared/data")   # or "gsm8k", "arithmetic"
    problems = task.load_split("train")                  # list[Problem(problem, answer, solution, meta)]
    prompt = task.prompt(problems[0].problem)             # "[MATH_TASK] Problem:\\n...\\n\\nSolution:"
    rewards = task.grade_batch(responses, answers, num_workers=8)
    steps = task.split_steps(response)
    task.stop_strings                                     # ("\\n\\n\\nProblem:",)

Options given to ``get_task`` are loader options (``data_dir`` for a directory laid out like
``shared/data`` with ``vineppo_splits``; ``data_files={split: path}``; hub names; ``seed``; for
arithmetic the ``ArithmeticConfig`` fields and ``num_problems``) plus ``prompt_template`` and
``stop_strings``. ``vinejax.tasks.steps.step_token_starts`` maps steps to token indices
(``token_char_offsets`` gives the character spans of sampled token ids), and
``vinejax.tasks.char_tokenizer`` builds the character-level tokenizer for the arithmetic task.
"""
from __future__ import annotations

from vinejax.tasks.base import DEFAULT_PROMPT_TEMPLATE, DEFAULT_STOP_STRINGS, Problem, StepSplitError, Task

ARITHMETIC_PROMPT_TEMPLATE = "{problem}\n"
ARITHMETIC_STOP_STRINGS = ("\n\n",)
KNOWN_TASKS = ("gsm8k", "math", "arithmetic")


def get_task(name: str, **options) -> Task:
    """The ``Task`` called ``name`` ("gsm8k", "math" or "arithmetic"); options as in the module docstring."""
    if name not in KNOWN_TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(KNOWN_TASKS)}")
    if name == "gsm8k":
        from vinejax.tasks import gsm8k as module
    elif name == "math":
        from vinejax.tasks import math as module
    else:
        from vinejax.tasks import arithmetic as module
    is_arithmetic = name == "arithmetic"
    template = options.pop("prompt_template",
                           ARITHMETIC_PROMPT_TEMPLATE if is_arithmetic else DEFAULT_PROMPT_TEMPLATE)
    stops = tuple(options.pop("stop_strings",
                              ARITHMETIC_STOP_STRINGS if is_arithmetic else DEFAULT_STOP_STRINGS))
    return Task(name=name, grade=module.grade, grade_batch=module.grade_batch,
                split_steps=module.split_steps, loader=module.load_split,
                prompt_template=template, stop_strings=stops, options=options)


__all__ = ["Problem", "StepSplitError", "Task", "get_task", "KNOWN_TASKS"]
