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
``data_files={split: path}`` with ``num_validation`` records carved out of train when there is
no validation file; hub names; ``seed``; for arithmetic the ``ArithmeticConfig`` fields and
``num_problems``) plus ``prompt_template`` and ``stop_strings``; an option a task does not take
is refused, naming the ones it does.

Beyond the built-in three: ``"jsonl"`` (``tasks.jsonl``: a task from jsonl files and options,
no Python) and plug-ins, ``"package.module:factory"``, where ``factory(**task.options)`` returns
a ``Task`` (``load_plugin_task``; its grader runs in the sandboxed workers, ``tasks.sandbox``).
``vinejax.tasks.steps.step_token_starts`` maps steps to token indices
(``token_char_offsets`` gives the character spans of sampled token ids), and
``vinejax.tasks.char_tokenizer`` builds the character-level tokenizer for the arithmetic task.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect

from vinejax.plugins import is_import_path, load_object
from vinejax.tasks.base import (
    DEFAULT_PROMPT_TEMPLATE,
    DEFAULT_STOP_STRINGS,
    Problem,
    StepSplitError,
    Task,
    TaskError,
)
from vinejax.tasks.data import DataError, check_holdout

ARITHMETIC_PROMPT_TEMPLATE = "{problem}\n"
ARITHMETIC_STOP_STRINGS = ("\n\n",)
KNOWN_TASKS = ("gsm8k", "math", "arithmetic", "jsonl")  # or a plug-in, "package.module:factory"
GRADERS = {  # task -> grader name -> module with grade() and grade_batch(); the first is the default
    "gsm8k": {"vineppo": "vinejax.tasks.gsm8k_grade_vineppo", "strict": "vinejax.tasks.gsm8k_grade_strict"},
    "math": {"vineppo": "vinejax.tasks.math_grade_vineppo", "strict": "vinejax.tasks.math_grade_strict"},
    "arithmetic": {"strict": "vinejax.tasks.arithmetic", "vineppo": "vinejax.tasks.gsm8k_grade_vineppo"},
}
TASK_OPTIONS = ("grader", "prompt_template", "stop_strings")  # what every built-in task takes besides its loader's


def get_task(name: str, grader: str | None = None, *, import_dir: str = "", data_dir: str = "", **options) -> Task:
    """The ``Task`` called ``name``: "gsm8k", "math", "arithmetic" (graded by ``grader``,
    "vineppo" or "strict"; default the first in ``GRADERS[name]``), "jsonl" (``tasks.jsonl``), or
    a plug-in "package.module:factory" (``load_plugin_task``, imported from PYTHONPATH or
    ``import_dir``). ``data_dir`` goes to the tasks that take it; ``options`` as in the module
    docstring. An unknown name or option is a one-line ``TaskError`` naming its config key."""
    options = dict(options, **({"grader": grader} if grader is not None else {}))
    check_name(name)
    if is_import_path(name):
        accepted = _accepted(load_object(name, "task.name", import_dir, error=TaskError))
        return load_plugin_task(name, _with_data_dir(options, data_dir, accepted), import_dir)
    if name == "jsonl":
        from vinejax.tasks import jsonl

        check_options(name, options, jsonl.OPTIONS)
        return jsonl.jsonl_task(**options)
    module = importlib.import_module(f"vinejax.tasks.{name}")
    known = builtin_options(module)
    options = _with_data_dir(options, data_dir, known)
    check_options(name, options, known)
    grader = options.pop("grader", None) or next(iter(GRADERS[name]))
    if grader not in GRADERS[name]:
        raise TaskError(f"config key 'task.options.grader' is {grader!r}: task {name!r} has the graders "
                        f"{', '.join(GRADERS[name])}")
    if options.get("data_files"):
        check_holdout(dict(options["data_files"]), options.get("num_validation", module.NUM_VALIDATION))
    grading = importlib.import_module(GRADERS[name][grader])
    is_arithmetic = name == "arithmetic"
    template = options.pop("prompt_template",
                           ARITHMETIC_PROMPT_TEMPLATE if is_arithmetic else DEFAULT_PROMPT_TEMPLATE)
    stops = tuple(options.pop("stop_strings",
                              ARITHMETIC_STOP_STRINGS if is_arithmetic else DEFAULT_STOP_STRINGS))
    return Task(name=name, grade=grading.grade, grade_batch=grading.grade_batch,
                split_steps=module.split_steps, loader=module.load_split,
                prompt_template=template, stop_strings=stops, options=options, grader=grader,
                answer=grading.answer, tokenizer=getattr(module, "tokenizer", None))


def check_name(name: str) -> None:
    """A one-line `TaskError` unless `name` is a built-in task or has a plug-in's form."""
    if name not in KNOWN_TASKS and not is_import_path(name):
        raise TaskError(f"config key 'task.name' is {name!r}: not one of {', '.join(KNOWN_TASKS)} nor a plug-in "
                        f"'package.module:factory'")


def builtin_options(module) -> tuple:
    """The options of a built-in task module: its loader's keywords (arithmetic: `OPTIONS`) and `TASK_OPTIONS`."""
    loader = getattr(module, "OPTIONS", None) or _accepted(module.load_split) or ()
    return tuple(o for o in loader if o != "split") + TASK_OPTIONS


def _accepted(fn) -> tuple | None:
    """The keyword names `fn` takes, None when it takes any (`**kwargs`)."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def _with_data_dir(options: dict, data_dir: str, known) -> dict:
    """`options` with `data_dir` when it is set and the task takes it (`known` None: any)."""
    return options | {"data_dir": data_dir} if data_dir and (known is None or "data_dir" in known) else options


def check_options(name: str, options: dict, known) -> None:
    """A one-line `TaskError` for an option task `name` does not take (`known` None: any)."""
    unknown = [key for key in options if known is not None and key not in known]
    if unknown:
        raise TaskError(f"config key 'task.options.{unknown[0]}' is not an option of task {name!r}; its options: "
                        f"{', '.join(sorted(known))}")


def load_plugin_task(name: str, options: dict, import_dir: str = "", sandboxed: bool = True) -> Task:
    """The `Task` a plug-in factory "package.module:factory" makes of `options`; every failure is
    one `TaskError` naming `task.name`. With `sandboxed` (not in the grading workers themselves)
    its `grade` runs in the time-limited workers (`tasks.sandbox`)."""
    from vinejax.tasks import sandbox

    where = f"config key 'task.name' is {name!r}"
    factory = load_object(name, "task.name", import_dir, error=TaskError)
    check_options(name, options, _accepted(factory))
    try:
        task = factory(**options)
    except (TaskError, DataError):
        raise
    except Exception as error:
        message = str(error).replace("\n", " ")
        raise TaskError(f"{where}: the factory raised {type(error).__name__}: {message}") from None
    if not isinstance(task, Task):
        raise TaskError(f"{where}: the factory returned a {type(task).__name__}, not a vinejax.tasks.Task")
    if not callable(task.grade):
        raise TaskError(f"{where}: its Task.grade is not callable")
    if not sandboxed:
        return task
    spec = sandbox.task_spec(name, options, import_dir)
    return dataclasses.replace(task, grade_batch=sandbox.sandboxed_grade_batch(spec, task.grade_timeout))


__all__ = ["Problem", "StepSplitError", "Task", "TaskError", "get_task", "load_plugin_task", "KNOWN_TASKS",
           "GRADERS"]
