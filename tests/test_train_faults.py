"""A run never saves a broken state: NaN injected into a real run stops it with the newest
checkpoint finite and resumable; checkpoint write faults and damaged checkpoints on real files;
resume under a changed config; readable samples."""
import json
import os
import stat
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from test_train_loop import read_metrics, reward_odd_length, tiny_config

from vinejax.checkpoint import Checkpointer, CheckpointError
from vinejax.config import ConfigError
from vinejax.tasks import arithmetic
from vinejax.train import loop
from vinejax.train.stage import RunError


def nan_from_iteration(start: int):
    """The odd-length reward, non-finite (inf) from iteration `start` on (counts calls on the
    iteration's 8 episodes). Not NaN: a NaN grade is a grade that raised, scored 0 and counted."""
    calls = {"n": 0}

    def grade(responses, problems, num_workers=0):
        rewards = reward_odd_length(responses, problems)
        if len(responses) == 8:
            calls["n"] += 1
        return rewards + np.inf if calls["n"] > start else rewards

    return grade


def checkpoint_arrays(run_dir: str, step: int) -> list:
    """Every array of checkpoint `step`, restored without a target."""
    tree = ocp.StandardCheckpointer().restore(os.path.join(run_dir, "checkpoints", str(step), "state"))
    return jax.tree.leaves(tree)


def test_nan_stops_the_run_and_the_newest_checkpoint_is_finite_and_resumes(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, "grpo", iterations=4, **{"train.export_hf": False})
    monkeypatch.setattr(arithmetic, "grade_batch", nan_from_iteration(2))
    # iteration 2's two steps are skipped (params unchanged, so checkpoint 3 is still finite);
    # the third skipped step in a row, in iteration 3, stops the run
    with pytest.raises(RunError, match=r"iteration 3: 3 optimizer steps in a row .* last good checkpoint is 3"):
        loop.run(cfg)
    assert sorted(int(d) for d in os.listdir(os.path.join(cfg.output_dir, "checkpoints")) if d.isdigit()) == [1, 2, 3]
    assert all(np.isfinite(np.asarray(a)).all() for a in checkpoint_arrays(cfg.output_dir, 3))
    monkeypatch.setattr(arithmetic, "grade_batch", reward_odd_length)  # the data fault is fixed: resume
    loop.run(cfg)
    records = read_metrics(cfg)
    assert [r["iteration"] for r in records] == [0, 1, 2, 3]
    assert records[2]["nonfinite"] == 1.0  # iteration 2's steps were skipped, the others ran
    assert all(np.isfinite(r["pg_loss"]) and r["nonfinite"] == 0.0 for r in records if r["iteration"] != 2)


def test_failed_save_names_the_folder_and_keeps_the_previous_checkpoint(tmp_path):
    folder = tmp_path / "ckpt"
    ckpt = Checkpointer(str(folder))
    state = {"w": np.arange(4.0)}
    ckpt.save(1, state, {"iteration": 1})
    os.chmod(folder, stat.S_IRUSR | stat.S_IXUSR)  # read-only: the next save cannot write
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user that ignores permissions")
        with pytest.raises(CheckpointError, match=rf"could not save checkpoint 2 in {folder}"):
            ckpt.save(2, state, {"iteration": 2})
    finally:
        os.chmod(folder, stat.S_IRWXU)
    fresh = Checkpointer(str(folder))
    assert fresh.latest_step() == 1
    restored, meta = fresh.restore(1, state)
    np.testing.assert_array_equal(restored["w"], state["w"]) and meta == {"iteration": 1}


@pytest.fixture
def small_disk(tmp_path):
    """A real 256 KiB filesystem (tmpfs), mounted when this user may mount; else the test skips."""
    import subprocess

    point = tmp_path / "disk"
    point.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(point)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small filesystem here")
    yield point
    subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_disk_full_names_the_folder_and_keeps_the_previous_checkpoint(small_disk):
    folder = small_disk / "ckpt"
    ckpt = Checkpointer(str(folder))
    ckpt.save(1, {"w": np.ones(16, np.float32)}, {"iteration": 1})
    with pytest.raises(CheckpointError, match=rf"could not save checkpoint 2 in {folder}"):
        big = np.random.default_rng(0).normal(size=1 << 20).astype(np.float32)  # 4 MiB, incompressible
        ckpt.save(2, {"w": big}, {"iteration": 2})  # on a 256 KiB disk
    restored, meta = Checkpointer(str(folder)).restore(1, {"w": np.zeros(16, np.float32)})
    assert float(restored["w"].sum()) == 16.0 and meta == {"iteration": 1}


def test_damaged_latest_checkpoint_is_reported_moved_aside_and_the_previous_used(tmp_path):
    path = tmp_path / "ckpt"
    ckpt = Checkpointer(str(path), keep=3)
    for step in (1, 2):
        ckpt.save(step, {"w": np.full(64, float(step))}, {"iteration": step})
    ckpt.close()
    data_files = [os.path.join(d, f) for d, _, fs in os.walk(path / "2") for f in fs
                  if os.path.getsize(os.path.join(d, f)) > 0 and not f.endswith(("metadata", ".json"))]
    for f in data_files:  # truncate the array data of checkpoint 2
        with open(f, "r+b") as handle:
            handle.truncate(1)
    warnings = []
    step, state, meta = Checkpointer(str(path)).restore_latest({"w": np.zeros(64)}, warn=warnings.append)
    assert step == 1 and meta["iteration"] == 1 and float(state["w"][0]) == 1.0
    assert len(warnings) == 1 and "checkpoint 2" in warnings[0] and "moved to" in warnings[0]
    aside = os.listdir(str(path) + ".damaged")
    assert len(aside) == 1 and aside[0].startswith("2-")  # kept, not deleted


def test_resume_under_a_changed_shape_is_refused_and_other_changes_are_recorded(tmp_path, capsys):
    cfg = tiny_config(tmp_path, "grpo", iterations=1, **{"train.export_hf": False})
    loop.run(cfg)
    changed = tiny_config(tmp_path, "grpo", iterations=2, **{"train.export_hf": False, "model.num_layers": 3})
    with pytest.raises(ConfigError, match="'model.num_layers' changed"):
        loop.run(changed)
    longer = tiny_config(tmp_path, "grpo", iterations=2, **{"train.export_hf": False})
    loop.run(longer)
    assert "train.iterations: 1 -> 2" in capsys.readouterr().out
    files = os.listdir(cfg.output_dir)
    assert json.load(open(os.path.join(cfg.output_dir, "config.json")))["train"]["iterations"] == 1  # kept
    assert any(f.startswith("config.") and f != "config.json" for f in files)  # the new one beside it
    restart = tiny_config(tmp_path, "grpo", iterations=1, **{"train.export_hf": False, "model.num_layers": 3,
                                                            "resume": False})
    loop.run(restart)  # starting over is allowed: the old run is set aside
    assert any(f.startswith("previous-") for f in os.listdir(cfg.output_dir))


def test_samples_file_holds_readable_episodes_with_step_values(tmp_path, monkeypatch):
    monkeypatch.setattr(arithmetic, "grade_batch", reward_odd_length)
    cfg = tiny_config(tmp_path, "vineppo", iterations=1, **{"train.export_hf": False, "train.samples_per_iteration": 3})
    loop.run(cfg)
    with open(os.path.join(cfg.output_dir, "samples.jsonl")) as f:
        samples = [json.loads(line) for line in f]
    assert len(samples) == 3 and all(s["iteration"] == 0 for s in samples)
    for s in samples:
        assert s["prompt"] and s["finish"] in ("eos", "stop", "length") and s["reward"] in (0.0, 1.0)
        assert "".join(step["text"] for step in s["steps"]).startswith(s["response"][:5])
        assert all(0.0 <= step["value"] <= 1.0 for step in s["steps"])


def test_wandb_offline_logs_the_same_metric_names(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setattr(arithmetic, "grade_batch", reward_odd_length)
    cfg = tiny_config(tmp_path, "grpo", iterations=1, **{"train.export_hf": False,
                                                         "logging.wandb_project": "vinejax-test"})
    loop.run(cfg)
    runs = [d for d in os.listdir(os.path.join(cfg.output_dir, "wandb")) if d.startswith("offline-run-")]
    assert len(runs) == 1
    files = os.listdir(os.path.join(cfg.output_dir, "wandb", runs[0]))
    assert any(f.endswith(".wandb") for f in files)  # the local run record W&B syncs later
    record = os.path.join(cfg.output_dir, "wandb", runs[0], next(f for f in files if f.endswith(".wandb")))
    keys = [k.encode() for k in ("rewards/mean", "pg_loss", "kl", "samples")]
    for _ in range(60):  # W&B's service process may still be flushing the record
        blob = open(record, "rb").read()  # protobuf records: the history keys are stored as plain strings
        if all(k in blob for k in keys):
            break
        time.sleep(0.5)
    assert [k for k in keys if k not in blob] == []


def test_lines_of_an_attempt_killed_before_its_first_checkpoint_are_dropped(tmp_path, monkeypatch):
    """A run killed before any checkpoint restarts from scratch: the lines it logged are dropped
    (they would otherwise appear twice, e.g. two iteration-0 evaluations with different clocks),
    and so is a last line cut short by the kill."""
    from vinejax.train.metrics import MetricsWriter

    monkeypatch.setattr(arithmetic, "grade_batch", reward_odd_length)
    cfg = tiny_config(tmp_path, "grpo", iterations=1, **{"train.export_hf": False})
    writer = MetricsWriter(cfg.output_dir)
    writer.write(0, {"eval/accuracy": 0.5, "time/eval": 300.0})
    writer.write_samples(0, [{"reward": 1.0, "finish": "eos", "answer": "2", "gold": "2", "response": "1+1=2"}])
    with open(os.path.join(cfg.output_dir, "metrics.jsonl"), "a") as f:
        f.write('{"iteration": 0, "rewa')
    loop.run(cfg)
    records = read_metrics(cfg)
    assert [r["iteration"] for r in records] == [0] and "eval/accuracy" not in records[0]
    with open(os.path.join(cfg.output_dir, "samples.jsonl")) as f:
        assert all(json.loads(line)["response"] != "1+1=2" for line in f)
