"""Preemption: a real SIGTERM (or SIGINT) sent at a random moment of each phase of a real run
(sampling, MC, training, evaluation, checkpoint save) stops it at the next safe point with a
checkpoint of the work done and one line; the resumed run ends with parameters, metrics and
samples bit-identical to an uninterrupted run, each iteration logged once. In-process (the
signals are real, the compiled programs shared); the command line's exit status is in test_cli."""
import json
import os
import signal

import jax
import numpy as np
import pytest
from helpers_preempt import SignalDuring, hook_timer_phase
from test_train_loop import exported_params, read_metrics, reward_odd_length, tiny_config

from vinejax.checkpoint import Checkpointer
from vinejax.tasks import arithmetic
from vinejax.train import loop, update
from vinejax.train.preemption import EXIT_PREEMPTED, Preempted

ITERATIONS = 3


def rl_config(root):
    """3 VinePPO iterations, evaluated at 0, 2 and the end, checkpointed at 2 and the end."""
    return tiny_config(root, "vineppo", iterations=ITERATIONS, **{
        "sampling.max_new_tokens": 16, "sampling.samples_per_problem": 4, "ppo.episodes_per_step": 16,
        "train.eval_every": 2, "train.checkpoint_every": 2, "eval.greedy": False, "task.num_eval_problems": 4})


def numbers(records):
    """Metric lines without wall-clock fields: what an exact resume reproduces."""
    return [{k: v for k, v in r.items() if not k.startswith("time")} for r in records]


def samples(cfg):
    with open(os.path.join(cfg.output_dir, "samples.jsonl")) as f:
        return [json.loads(line) for line in f]


def assert_same_params(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(arithmetic, "grade_batch", reward_odd_length)
        cfg = rl_config(tmp_path_factory.mktemp("straight"))
        loop.run(cfg)
    return cfg


# phase -> (where it is hooked, which call of it gets the signal)
PHASES = {"sampling": ("sample", 0), "MC": ("mc", 0), "training": ("train", 0),
          "evaluation": ("evaluate", 1), "checkpoint save": ("save", 0)}


@pytest.mark.parametrize("phase", list(PHASES))
def test_sigterm_in_each_phase_stops_saves_and_resumes_bit_identically(phase, straight, tmp_path, monkeypatch,
                                                                       capsys):
    monkeypatch.setattr(arithmetic, "grade_batch", reward_odd_length)
    cfg = rl_config(tmp_path)
    hook, nth = PHASES[phase]
    sender = SignalDuring(nth)
    with pytest.MonkeyPatch.context() as m:
        if hook == "evaluate":
            m.setattr(loop, "evaluate", sender.wrap(loop.evaluate))
        elif hook == "save":
            m.setattr(Checkpointer, "save", sender.wrap(Checkpointer.save))
        else:
            hook_timer_phase(m, hook, sender)
        with pytest.raises(Preempted) as stopped:
            loop.run(cfg)
    assert sender.sent, f"the {phase} phase never ran"
    message = str(stopped.value)
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("preempted")]
    assert said == [message] and message.startswith("preempted (SIGTERM): stopped at iteration")
    assert f"exit {EXIT_PREEMPTED}" in message
    # stopped at the safe point after the phase: an iteration's end (the evaluation's own end)
    where = {"evaluation": 2, "checkpoint save": 2}.get(phase, 1)
    assert f"iteration {where} with checkpoint {where} in" in message, (message, sender.delay)
    ckpt = Checkpointer(os.path.join(cfg.output_dir, "checkpoints"))
    assert ckpt.latest_step() == where
    meta = ckpt.restore(where, ckpt_target(cfg))[1]
    ckpt.close()
    assert meta["evaluated"] == (phase == "evaluation")  # a finished evaluation is not done again
    assert not os.path.exists(os.path.join(cfg.output_dir, "hf"))
    assert not os.path.exists(os.path.join(cfg.output_dir, "done.json"))
    assert os.path.getsize(os.path.join(cfg.output_dir, "curves.png")) > 1000  # drawn at each evaluation

    loop.run(cfg)  # resumed to the end
    assert f"resumed from checkpoint {where} " in capsys.readouterr().out
    assert_same_params(exported_params(cfg), exported_params(straight))
    records = read_metrics(cfg)
    assert [r["iteration"] for r in records if "rewards/mean" in r] == list(range(ITERATIONS))  # logged once
    assert [r["iteration"] for r in records if "eval/accuracy" in r] == [0, 2, 3]
    assert numbers(records) == numbers(read_metrics(straight))
    assert samples(cfg) == samples(straight)
    assert json.load(open(os.path.join(cfg.output_dir, "done.json")))["position"] == ITERATIONS


def ckpt_target(cfg):
    """The restore target of an RL checkpoint of `cfg`."""
    from vinejax.train.context import build_context
    from vinejax.train.iteration import init_state

    ctx, params, _ = build_context(cfg)
    return init_state(ctx, params)


def test_sigint_mid_sft_stops_after_the_step_and_resumes_bit_identically(tmp_path, monkeypatch, capsys):
    settings = {"sft.epochs": 3, "sft.batch_size": 16, "sft.micro_batch": 8, "optim.lr": 3e-3,
                "train.checkpoint_every": 10, "train.eval_every": 1, "eval.greedy": False,
                "task.num_eval_problems": 4}
    straight = tiny_config(tmp_path / "a", "sft", **settings)
    loop.run(straight)

    cfg = tiny_config(tmp_path / "b", "sft", **settings)
    sender = SignalDuring(4, signum=signal.SIGINT)  # during the 5th optimizer step
    with pytest.MonkeyPatch.context() as m:
        m.setattr(update, "sft_step", sender.wrap(update.sft_step))
        with pytest.raises(Preempted, match=r"preempted \(SIGINT\): stopped at step 5 with checkpoint 5 in"):
            loop.run(cfg)
    assert sorted(os.listdir(os.path.join(cfg.output_dir, "checkpoints"))) == ["5"]  # not on the cadence (10)
    loop.run(cfg)
    assert "resumed from checkpoint 5 " in capsys.readouterr().out
    assert_same_params(exported_params(cfg), exported_params(straight))
    records = read_metrics(cfg)
    assert numbers(records) == numbers(read_metrics(straight))
    assert [r["iteration"] for r in records] == [1, 12, 12]  # step lines at 1 and the end, then the evaluation
