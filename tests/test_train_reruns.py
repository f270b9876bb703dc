"""Reruns: a finished run rerun with the same config prints its result and does nothing else (no
model load, no evaluation, no export); a config that extends it (more iterations, more SFT steps,
a larger time budget) continues from its last checkpoint; config.json is recorded only once the
config, task and model have been checked."""
import json
import os

import pytest
from test_train_baselines import baseline_config, reward_short
from test_train_loop import read_metrics, reward_odd_length, tiny_config
from test_train_preemption import numbers

from vinejax.tasks import arithmetic
from vinejax.train import loop, run_dir, update
from vinejax.train.metrics import RunClock


def refuse(what):
    def called(*args, **kwargs):
        raise AssertionError(f"a finished run's rerun {what}")

    return called


def rl(root, iterations):
    return tiny_config(root, "grpo", iterations=iterations, **{
        "train.eval_every": 2, "train.checkpoint_every": 10, "eval.greedy": False, "task.num_eval_problems": 4})


def test_finished_rl_run_reruns_as_a_noop_and_continues_when_extended(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(arithmetic, "grade_batch", reward_odd_length)
    first = loop.run(rl(tmp_path, 2))
    two = read_metrics(rl(tmp_path, 2))
    exported = open(os.path.join(tmp_path, "grpo", "hf", "model.safetensors"), "rb").read()
    assert os.path.getsize(os.path.join(tmp_path, "grpo", "curves.png")) > 1000
    capsys.readouterr()

    with pytest.MonkeyPatch.context() as m:  # the same config: nothing loads, evaluates or exports
        m.setattr(loop, "build_context", refuse("loaded the model"))
        assert loop.run(rl(tmp_path, 2)) == first
    out = capsys.readouterr().out
    assert "finished earlier: it 2 | eval" in out and "done.json" in out

    changed = rl(tmp_path, 2)
    changed.train.kl_warning = 5.0  # a change that adds no work: still nothing evaluated or exported
    with pytest.MonkeyPatch.context() as m:
        m.setattr(loop, "evaluate", refuse("evaluated"))
        m.setattr(run_dir, "export_policy", refuse("exported"))
        assert loop.run(changed) == first
    assert "finished earlier: it 2" in capsys.readouterr().out
    assert read_metrics(changed) == two

    longer = rl(tmp_path, 3)
    loop.run(longer)
    assert "resumed from checkpoint 2 " in capsys.readouterr().out
    records = read_metrics(longer)
    assert [r["iteration"] for r in records if "rewards/mean" in r] == [0, 1, 2]  # each once
    assert [r["iteration"] for r in records if "eval/accuracy" in r] == [0, 2, 3]
    assert numbers(records[:len(two)]) == numbers(two)  # the first two iterations as they were
    assert json.load(open(os.path.join(longer.output_dir, "done.json")))["position"] == 3
    assert open(os.path.join(longer.output_dir, "hf", "model.safetensors"), "rb").read() != exported


def test_finished_sft_continues_when_its_steps_grow(tmp_path, capsys):
    settings = {"sft.batch_size": 16, "sft.micro_batch": 8, "train.eval_every": 0, "train.checkpoint_every": 10}
    short = tiny_config(tmp_path, "sft", **settings, **{"sft.max_steps": 4})
    loop.run(short)
    capsys.readouterr()
    longer = tiny_config(tmp_path, "sft", **settings, **{"sft.max_steps": 6})
    loop.run(longer)
    out = capsys.readouterr().out
    assert "resumed from checkpoint 4 " in out and "finished earlier" not in out
    assert [r["iteration"] for r in read_metrics(longer)] == [1, 4, 6]
    assert sorted(os.listdir(os.path.join(longer.output_dir, "checkpoints"))) == ["4", "6"]
    assert json.load(open(os.path.join(longer.output_dir, "done.json")))["position"] == 6


def test_config_is_recorded_once_the_model_is_checked(tmp_path, capsys):
    bad = tiny_config(tmp_path, "sft", **{"model.hf_path": str(tmp_path / "no_such_model"), "sft.max_steps": 1})
    with pytest.raises(FileNotFoundError, match="model.hf_path"):
        loop.run(bad)
    assert not os.path.exists(os.path.join(bad.output_dir, "config.json"))
    fixed = tiny_config(tmp_path, "sft", **{"sft.max_steps": 1, "train.eval_every": 0})
    loop.run(fixed)
    assert "config differs" not in capsys.readouterr().out
    assert json.load(open(os.path.join(fixed.output_dir, "config.json")))["model"]["hf_path"] == ""


def test_dpo_time_budget_stops_every_process_ends_the_run_and_a_larger_budget_continues(tmp_path, monkeypatch,
                                                                                       capsys):
    """The budget is read from the run's clock (made to run out after the second optimizer step
    here) and decided for all processes together; the run then ends: evaluated, exported, done."""
    monkeypatch.setattr(arithmetic, "grade_batch", reward_short)
    steps = []
    real_step = update.dpo_step
    monkeypatch.setattr(update, "dpo_step", lambda *a, **k: steps.append(1) or real_step(*a, **k))
    real_elapsed = RunClock.elapsed
    monkeypatch.setattr(RunClock, "elapsed", lambda self: 1e9 if len(steps) >= 2 else real_elapsed(self))
    cfg = baseline_config(tmp_path, "dpo_positive", **{"train.time_budget_minutes": 60.0})
    loop.run(cfg)
    assert "time budget of 60.0 min reached at step 2" in capsys.readouterr().out
    records = read_metrics(cfg)
    assert [r["iteration"] for r in records if "eval/accuracy" in r] == [0, 2]  # the budget's end is evaluated
    assert json.load(open(os.path.join(cfg.output_dir, "done.json")))["position"] == 2
    assert os.path.isdir(os.path.join(cfg.output_dir, "hf"))

    loop.run(cfg)  # the same budget: finished
    assert "finished earlier: step 2" in capsys.readouterr().out
    monkeypatch.setattr(RunClock, "elapsed", real_elapsed)
    unlimited = baseline_config(tmp_path, "dpo_positive")
    loop.run(unlimited)
    assert "resumed from checkpoint 2 " in capsys.readouterr().out
    records = read_metrics(unlimited)
    steps_logged = [r["iteration"] for r in records if "dpo_loss" in r]
    assert steps_logged[0] == 1 and steps_logged[-1] == records[-1]["iteration"] > 2
    assert len([r for r in records if "dpo/pairs" in r]) == 1  # the round was sampled once
