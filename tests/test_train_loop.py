"""The real training loop end to end on a tiny random model and the arithmetic task."""
import os

import jax
import numpy as np
import pytest

from vinejax.checkpoint import Checkpointer
from vinejax.config import base_config
from vinejax.model.hf import load_hf_model
from vinejax.tasks import arithmetic
from vinejax.train import loop, metrics
from vinejax.train.context import build_context
from vinejax.train.estimators import mc as mc_estimators
from vinejax.train.values import EarlyMC


def tiny_config(tmp_path, algo="vineppo", iterations=2, **changes):
    c = base_config()
    c.algo = algo
    c.seed = 3
    c.output_dir = str(tmp_path / algo) if tmp_path is not None else ""  # None: `changes` gives output_dir
    c.task.name = "arithmetic"
    c.task.options.num_operations = 2
    c.task.options.num_problems = 64
    c.task.num_eval_problems = 8
    c.task.max_prompt_tokens = 32
    c.model.hidden_size = 32
    c.model.num_layers = 2
    c.model.num_heads = 2
    c.model.num_kv_heads = 1
    c.model.intermediate_size = 64
    c.model.max_position_embeddings = 64
    c.sft.max_seq_len = 64
    c.sampling.problems_per_iteration = 4
    c.sampling.samples_per_problem = 2
    c.sampling.max_new_tokens = 12
    c.sampling.batch_size = 8
    c.sampling.temperature = 1.0
    c.sampling.top_p = 1.0
    c.vineppo.num_rollouts = 2
    c.vineppo.chunk_rows = 64
    c.ppo.episodes_per_step = 8
    c.ppo.micro_batch = 4
    c.ppo.critic_lr = 1e-3
    c.optim.lr = 1e-3
    c.optim.warmup_frac = 0.0
    c.train.iterations = iterations
    c.train.eval_every = 0
    c.train.checkpoint_every = 1
    c.train.export_hf = True
    c.eval.samples_per_problem = 1
    c.eval.max_new_tokens = 12
    c.mesh.shape = (1, 1, 1)
    for key, value in changes.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return c


def initial_params(cfg):
    ctx, params, _ = build_context(cfg)
    return jax.device_get(params)


def exported_params(cfg):
    _, params = load_hf_model(os.path.join(cfg.output_dir, "hf"))
    return jax.device_get(params)


def read_metrics(cfg):
    return metrics.read_metrics(os.path.join(cfg.output_dir, "metrics.jsonl"))


def run_killed_after(monkeypatch, cfg, position: int):
    """Run `cfg` until the checkpoint at `position` is saved, then die (a KeyboardInterrupt, as a
    kill would end it before the next save); Checkpointer.save is restored afterwards."""
    real_save = Checkpointer.save

    def save_then_die(self, step, state, meta, wait=True):
        real_save(self, step, state, meta, wait)
        if meta["progress"]["position"] == position:
            raise KeyboardInterrupt(f"simulated kill after iteration {position}")

    monkeypatch.setattr(Checkpointer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        loop.run(cfg)
    monkeypatch.setattr(Checkpointer, "save", real_save)


def reward_odd_length(responses, problems, num_workers=0):
    """A reward a random model earns about half the time (of its finished responses)."""
    return np.array([float(len(r) % 2 == 1) for r in responses], np.float32)


MIDPOINT_RULE = '''
import numpy as np


def midpoint(x):
    """The prompt and the middle of the response (the prompt alone for a 1-token response)."""
    p, t = np.asarray(x.episodes.prompt_lens), np.asarray(x.episodes.total_lens)
    mid = (p + t) // 2
    return np.stack([p, mid], 1), np.where(mid > p, 2, 1)
'''


@pytest.mark.parametrize("algo", ["vineppo", "vineppo_adaptive", "vineppo_allocation", "ppo", "grpo"])
def test_loop_runs_and_changes_params(tmp_path, algo, monkeypatch):
    # A random tiny model never solves arithmetic: give it a reward it can earn, so advantages
    # (and the policy gradient) are really non-zero.
    monkeypatch.setattr(arithmetic, "grade_batch", reward_odd_length)
    adaptive = algo == "vineppo_adaptive"  # adaptive K, 16 episodes in 2 groups of vineppo.episodes_per_group
    allocated = algo == "vineppo_allocation"  # the allocation, on states every 4 tokens, at most 3 per response
    algo = "vineppo" if adaptive or allocated else algo
    cfg = tiny_config(tmp_path, algo, **{"sampling.max_new_tokens": 32, "sampling.samples_per_problem": 4,
                                         "ppo.episodes_per_step": 16, "vineppo.adaptive.enabled": adaptive,
                                         "vineppo.allocation.enabled": allocated, "vineppo.episodes_per_group": 8})
    if allocated:
        cfg.vineppo.states, cfg.vineppo.state_interval, cfg.vineppo.max_states = "tokens", 4, 3
    elif algo == "vineppo" and not adaptive:  # a user's state rule, by import path from the config's folder
        (tmp_path / "loop_states_rule.py").write_text(MIDPOINT_RULE)
        cfg.import_dir, cfg.vineppo.states = str(tmp_path), "loop_states_rule:midpoint"
    before = initial_params(cfg)
    loop.run(cfg)
    after = exported_params(cfg)
    moved = [float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())
             for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after))]
    assert max(moved) > 1e-4, "training did not change the policy"
    records = read_metrics(cfg)
    assert [r["iteration"] for r in records] == [0, 1]
    for r in records:
        for key in ("rewards/mean", "pg_clipfrac", "approx_kl", "kl", "grad_norm"):
            assert np.isfinite(r[key]), (key, r[key])
    mixed = [r for r in records if 0 < r["rewards/mean"] < 1]
    assert mixed and all(r["advantages/std"] > 0.1 for r in mixed)
    if adaptive:
        for r in records:  # rounds of 3 up to the tiers' 12 per distinct state
            assert 3 <= r["adaptive/rollouts_per_state"] <= 12 and r["mc/rows"] >= 3 * r["mc/unique_states"]
    elif allocated:
        for r in records:  # each group of 8 episodes spends round(4.5 x its distinct states)
            assert abs(r["mc/rows"] - 4.5 * r["mc/unique_states"]) <= 1 and r["allocation/calls"] == 4
            assert r["allocation/ratio_to_fixed_k"] == pytest.approx(r["mc/rows"] / (2 * r["mc/unique_states"]))
            assert r["steps/count/max"] <= 3 and r["episodes/parse_failed"] == 0
    elif algo == "vineppo":
        assert records[0]["mc/num_states"] >= 8  # at least the prompt state of each episode
        assert [r["steps/count/max"] for r in records] == [2, 2]  # the prompt and the response's middle
        assert records[0]["mc/rollouts"] == 2 * records[0]["mc/num_states"]
    elif algo == "ppo":
        assert np.isfinite(records[0]["vf_loss"])


SCHEDULING = ("time/", "mc/slots", "mc/slot_steps", "mc/live_fraction", "mc/chunks")  # how, not what


def test_results_do_not_depend_on_how_the_work_is_batched(tmp_path, monkeypatch):
    """One VinePPO iteration with everything at once, and with 2 prompts per generate call, 2 rows
    decoded at once (refilled slots), MC groups of 2 episodes that start while later calls still
    sample (and, `vineppo.early_start` off, after the last call), and 4 MC slots: the same
    episodes, MC values, advantages, losses and parameters."""
    monkeypatch.setattr(arithmetic, "grade_batch", reward_odd_length)
    common = {"sampling.max_new_tokens": 24, "train.samples_per_iteration": 8}
    batched = {"sampling.batch_size": 2, "sampling.decode_rows": 2, "vineppo.episodes_per_group": 2,
               "vineppo.chunk_rows": 4}
    whole = tiny_config(tmp_path / "whole", iterations=1, **common)
    split = tiny_config(tmp_path / "split", iterations=1, **common, **batched)
    late = tiny_config(tmp_path / "late", iterations=1, **common, **batched, **{"vineppo.early_start": False})
    early = []  # the iterations whose MC started per group during sampling
    monkeypatch.setattr(mc_estimators, "EarlyMC", lambda *a: early.append(1) or EarlyMC(*a))
    started = []
    for cfg in (whole, split, late):
        loop.run(cfg)
        started.append(len(early))
    assert started == [1, 2, 2]
    a = read_metrics(whole)[0]
    assert a["mc/num_states"] >= 8 and 0 < a["rewards/mean"] < 1 and a["advantages/std"] > 0
    for other in (split, late):
        (b,) = read_metrics(other)
        assert b["mc/slots"] < a["mc/slots"]
        for key, value in a.items():
            if not key.startswith(SCHEDULING):
                np.testing.assert_allclose(b[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
        samples = [metrics.read_metrics(os.path.join(c.output_dir, "samples.jsonl")) for c in (whole, other)]
        assert samples[0] == samples[1]  # responses, rewards, state values and advantages as text and numbers
        for x, y in zip(jax.tree.leaves(exported_params(whole)), jax.tree.leaves(exported_params(other))):
            np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), atol=1e-6)


def test_kill_and_resume_matches_uninterrupted_run(tmp_path, monkeypatch):
    straight = tiny_config(tmp_path / "a", iterations=4)
    loop.run(straight)

    resumed = tiny_config(tmp_path / "b", iterations=4)
    run_killed_after(monkeypatch, resumed, 2)
    assert not os.path.exists(os.path.join(resumed.output_dir, "hf"))
    loop.run(resumed)  # resume=True by default: continues from the checkpoint at iteration 2

    for a, b in zip(jax.tree.leaves(exported_params(straight)), jax.tree.leaves(exported_params(resumed))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [r["iteration"] for r in read_metrics(resumed)] == [0, 1, 2, 3]


def test_sft_stage_learns_and_a_rerun_does_nothing(tmp_path, capsys):
    cfg = tiny_config(tmp_path, "sft", **{"sft.epochs": 8, "sft.batch_size": 16, "optim.lr": 3e-3,
                                          "train.checkpoint_every": 10, "train.eval_every": 0})
    loop.run(cfg)
    nll = [r["sft/nll"] for r in read_metrics(cfg)]
    assert nll[-1] < nll[0] * 0.85, nll
    assert not os.path.exists(os.path.join(cfg.output_dir, "hf", "DONE"))  # no run marker inside the export
    capsys.readouterr()
    assert loop.run(cfg)["sft/nll"] == nll[-1]
    assert "finished earlier: sft step 32 | nll" in capsys.readouterr().out


def test_ppo_kl_in_reward_with_adaptive_controller(tmp_path, monkeypatch):
    """The official KL options: −β·kl_t in the token rewards (β = 0 in the loss) and the adaptive
    controller, whose β after each iteration is the hand formula of the logged KL."""
    monkeypatch.setattr(arithmetic, "grade_batch", reward_odd_length)
    cfg = tiny_config(tmp_path, "ppo", iterations=3, **{
        "ppo.kl_in_reward": True, "ppo.adaptive_kl": True, "ppo.kl_coef": 0.05, "ppo.kl_target": 0.01,
        "ppo.kl_horizon": 40, "optim.lr": 3e-3})
    loop.run(cfg)
    records = read_metrics(cfg)
    assert records[0]["kl_coef"] == pytest.approx(0.05)
    n = cfg.sampling.problems_per_iteration * cfg.sampling.samples_per_problem
    for prev, nxt in zip(records, records[1:]):
        error = np.clip(prev["rollout/kl_k1"] / 0.01 - 1.0, -0.2, 0.2)
        assert nxt["kl_coef"] == pytest.approx(prev["kl_coef"] * (1 + error * n / 40), rel=1e-5)
    assert any(r["rollout/kl_k1"] != 0 for r in records[1:])  # the policy moved from the reference
    assert records[-1]["kl_coef"] != records[0]["kl_coef"]
