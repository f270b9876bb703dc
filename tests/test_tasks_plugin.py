"""Plug-in tasks by import path: the contract, every one-line error naming task.name, and the
user's grader in the sandboxed workers (a raise is counted, a hang times out, both score 0)."""
import os
import textwrap
import time

import numpy as np
import pytest

from vinejax.tasks import Problem, Task, TaskError, get_task
from vinejax.train.episodes import Episodes, grade_episodes

PLUGIN = """
    import os, time
    from vinejax.tasks import Problem, Task

    PROBLEMS = [Problem(problem=f"{i}+{i}", answer=str(2 * i), solution=f"{i}+{i}={2 * i}\\n#### {2 * i}")
                for i in range(12)]

    def grade(response, problem):
        if "raise" in response:
            raise RuntimeError("the grader broke")
        if "hang" in response:
            time.sleep(600)
        if "pid" in response:  # where the grade runs
            return float(os.getpid() % 1000)
        return float(response.strip().endswith(problem.answer))

    def make(grade_timeout=2.0, size=12):
        return Task(name="doubling", grade=grade, loader=lambda split: PROBLEMS[:size],
                    split_steps=lambda text: text.splitlines(keepends=True), prompt_template="{problem}=",
                    stop_strings=("\\n\\n",), grade_timeout=grade_timeout)

    def make_anything(**options):
        return make()

    def slow_make(grade_timeout):  # a factory that takes longer than a grade may (loads its data)
        time.sleep(2.5)
        return make(grade_timeout=grade_timeout)

    def raises(**options):
        raise FileNotFoundError("no such dataset: /data/doubling")

    def not_a_task():
        return {"name": "doubling"}

    NOT_CALLABLE = 3
"""


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugins")
    (folder / "doubling.py").write_text(textwrap.dedent(PLUGIN))
    (folder / "broken_task.py").write_text("import no_such_dependency_xyz\n")
    return str(folder)


def test_plugin_task_loads_with_its_options(plugin_dir):
    task = get_task("doubling:make", import_dir=plugin_dir, size=5)
    assert isinstance(task, Task) and task.name == "doubling" and task.prompt("2+2") == "2+2="
    assert [p.answer for p in task.load_split("train")] == ["0", "2", "4", "6", "8"]
    assert task.split_steps("a\nb\n") == ["a\n", "b\n"]
    assert task.chat_template is False and task.answer is None  # fields added later keep their defaults
    # the factory takes **options: anything goes to it
    assert get_task("doubling:make_anything", import_dir=plugin_dir, whatever=1).name == "doubling"


@pytest.mark.parametrize("name,options,message", [
    ("no_such_pkg.tasks:make", {}, "module 'no_such_pkg.tasks' not found"),
    ("doubling:missing", {}, "module 'doubling' has no 'missing'"),
    ("doubling:NOT_CALLABLE", {}, "is a int, not a factory"),
    ("doubling:raises", {}, "the factory raised FileNotFoundError: no such dataset: /data/doubling"),
    ("doubling:not_a_task", {}, "the factory returned a dict, not a vinejax.tasks.Task"),
    ("broken_task:make", {}, "importing 'broken_task' failed: No module named 'no_such_dependency_xyz'"),
    ("doubling:make", {"grdaer": "x"}, "'task.options.grdaer' is not an option of task 'doubling:make'; its "
                                       "options: grade_timeout, size"),
    ("mytask", {}, "'task.name' is 'mytask': not one of gsm8k, math, arithmetic, jsonl"),
])
def test_plugin_errors_are_one_line_naming_task_name(plugin_dir, name, options, message):
    with pytest.raises(TaskError) as info:
        get_task(name, import_dir=plugin_dir, **options)
    text = str(info.value)
    assert message in text and "\n" not in text
    assert "task.name" in text or "task.options" in text


def test_plugin_grader_runs_in_the_workers_and_a_raise_or_a_hang_scores_zero_and_is_counted(plugin_dir):
    task = get_task("doubling:make", import_dir=plugin_dir, grade_timeout=1.0)
    problems = task.load_split("train")[:6]  # answers 0, 2, 4, 6, 8, 10
    texts = ["1+1=2\n#### 2", "raise", "wrong", "hang", "pid", "#### 10"]
    ep = Episodes(tokens=np.zeros((6, 2), np.int32), logprobs=np.zeros((6, 2), np.float32),
                  prompt_lens=np.ones(6, np.int32), total_lens=np.full(6, 2, np.int32),
                  finish_reason=np.ones(6, np.int32), texts=texts, problems=[problems[1]] + problems[1:],
                  problem_index=np.arange(6, dtype=np.int32))
    began = time.monotonic()
    rewards, errors = grade_episodes(task, ep, workers=2)
    took = time.monotonic() - began
    assert errors == 2 and rewards[1] == 0.0 and rewards[3] == 0.0  # the raise and the hang
    assert rewards[0] == 1.0 and rewards[2] == 0.0 and rewards[5] == 1.0
    assert rewards[4] != float(os.getpid() % 1000)  # graded in another process
    assert took < 30, took  # the hang was cut at grade_timeout (plus a worker restart)
    # the user's own in-process grade still raises: only the configured path is sandboxed
    with pytest.raises(RuntimeError):
        task.grade("raise", problems[0])
    raw = task.grade_batch(["raise", "1+1=2"], [problems[0], problems[1]], num_workers=1)
    assert np.isnan(raw[0]) and raw[1] == 1.0


def test_problem_records_travel_to_the_workers_whole(plugin_dir):
    task = get_task("doubling:make", import_dir=plugin_dir)
    problem = Problem(problem="3+3", answer="6", solution="", meta={"tuple": (1, 2), "nested": {"a": [1]}})
    assert task.grade_batch(["= 6"], [problem], num_workers=1).tolist() == [1.0]


def test_a_slow_factory_is_not_cut_by_the_grade_timeout(plugin_dir):
    """Each worker builds the task before it takes a timed grade (its warm-up)."""
    task = get_task("doubling:slow_make", import_dir=plugin_dir, grade_timeout=1.0)
    problems = task.load_split("train")[:3]
    rewards = task.grade_batch(["= 0", "= 2", "= 5"], problems, num_workers=2)
    assert rewards.tolist() == [1.0, 1.0, 0.0]
