"""A plug-in task's grader runs where the built-in graders' sympy work runs: in the sandboxed
worker processes of `symbolic` (fresh interpreters, memory-capped), each grade cut at the task's
`grade_timeout` seconds. A user's grader is untrusted for time, not for safety: a grade that
raises, hangs or kills its worker gives NaN (`grade_batch`), which the training and evaluation
code count (`rewards/grade_errors`) and score 0.

Each worker rebuilds the task once from its spec (import path, options, import folder) before it
takes jobs (its warm-up: a factory that loads data is not cut by the per-grade timeout) and calls
its `grade(response, problem)`; the problem travels pickled.
"""
from __future__ import annotations

import base64
import functools
import json
import pickle
from typing import Sequence

import numpy as np

from vinejax.tasks import symbolic
from vinejax.tasks.base import Problem, check_batch

CHECK = "task_grade"  # the worker check (symbolic.CHECKS) that grades with a plug-in task


def task_spec(name: str, options: dict, import_dir: str) -> str:
    """The JSON spec a worker rebuilds the task from (`tasks.load_plugin_task`)."""
    return json.dumps({"name": name, "options": options, "import_dir": import_dir}, sort_keys=True)


@functools.lru_cache(maxsize=8)
def _task(spec: str):
    from vinejax.tasks import load_plugin_task  # the worker's own copy of the user's task

    s = json.loads(spec)
    return load_plugin_task(s["name"], s["options"], s["import_dir"], sandboxed=False)


def load_in_worker(spec: str) -> bool:
    """Build the plug-in task of `spec` (a worker's warm-up, outside the per-grade timeout)."""
    return _task(spec) is not None


def grade_in_worker(spec: str, response: str, problem: str) -> float:
    """The plug-in task's grade of `response` to the pickled `problem` (runs in a worker)."""
    return float(_task(spec).grade(response, pickle.loads(base64.b64decode(problem))))


def _packed(problem: Problem) -> str:
    return base64.b64encode(pickle.dumps(problem)).decode("ascii")


def sandboxed_grade_batch(spec: str, timeout: float):
    """`grade_batch(responses, problems, num_workers=None) -> f32[N]` grading each pair in the
    workers (`num_workers` of them, default 1) with a `timeout` per grade; NaN marks a grade that
    raised, timed out or killed its worker."""

    def grade_batch(responses: Sequence[str], problems: Sequence[Problem], num_workers: int | None = None):
        check_batch(responses, problems)
        if not responses:
            return np.zeros((0,), np.float32)
        pool = symbolic.get_pool(num_workers or 1)
        pool.warm_up("task_load", spec)  # each worker builds the task before it takes a timed grade
        pool.timeout = timeout
        packed: dict = {}  # id(problem) -> its pickle: the samples of one problem share a record
        for p in problems:
            if id(p) not in packed:
                packed[id(p)] = _packed(p)
        jobs = [(spec, r, packed[id(p)]) for r, p in zip(responses, problems)]
        return np.array([np.nan if x is None else x for x in pool.run_many(jobs, CHECK)], np.float32)

    return grade_batch
