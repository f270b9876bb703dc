"""RestEM and DPO+ as training algorithms: the data each round builds from real samples of a
tiny model (checked against hand counts and an independent reference pass), the candidate
cadence, and end-to-end runs on the arithmetic task (learning, metrics, exact resume)."""
import os

import jax
import numpy as np
import pytest
from test_train_loop import exported_params, initial_params, read_metrics, tiny_config

from vinejax.checkpoint import Checkpointer
from vinejax.model import llama
from vinejax.tasks import arithmetic
from vinejax.train import loop
from vinejax.train.context import build_context
from vinejax.train.dpo import build_pairs
from vinejax.train.offline_data import TokenRows, load_arrays, sample_and_grade
from vinejax.train.restem import candidate_steps, data_path, finetuning_set

SHORT = 6  # a response earns 1 when it finished within SHORT characters


def reward_short(responses, answers, num_workers=0):
    """A reward a random tiny model earns about a third of the time, and learns fast (stop early)."""
    return np.array([float(len(r) <= SHORT) for r in responses], np.float32)


@pytest.fixture(autouse=True)
def short_is_correct(monkeypatch):
    monkeypatch.setattr(arithmetic, "grade_batch", reward_short)


def baseline_config(tmp_path, algo, **changes):
    """The tiny setup of test_train_loop; evaluation and selection sample like training does, so
    every phase reuses one compiled sampler."""
    settings = {
        "sampling.problems_per_iteration": 8, "sampling.samples_per_problem": 4, "sampling.max_new_tokens": 12,
        "sampling.temperature": 0.7, "eval.temperature": 0.7, "eval.top_p": 1.0, "eval.samples_per_problem": 4,
        "eval.max_new_tokens": 12,
        "eval.greedy": False, "restem.select_split": "test", "restem.num_select_problems": 8,
        "restem.batch_size": 4, "restem.micro_batch": 2, "restem.epochs": 2, "restem.eval_every_steps": 2,
        "dpo.batch_size": 4, "dpo.micro_batch": 2, "dpo.epochs": 2, "dpo.max_pairs_per_problem": 3,
        "dpo.eval_every_steps": 3, "dpo.beta": 0.3, "train.iterations": 2 if algo == "restem" else 1,
        "train.eval_every": 1,
    }
    return tiny_config(tmp_path, algo, **(settings | changes))


def expected_reward(ep, row) -> float:
    """The hand rule: finished and short."""
    return float(ep.finished[row] and len(ep.texts[row]) <= SHORT)


def test_candidate_steps_follow_the_cumulative_cadence():
    # Official: a checkpoint every 500 *cumulative* global steps, plus the start and the end.
    assert candidate_steps(0, 1800, 500) == [500, 1000, 1500, 1800]
    assert candidate_steps(1800, 1800, 500) == [200, 700, 1200, 1700, 1800]
    assert candidate_steps(0, 1000, 500) == [500, 1000]  # the end is a multiple: listed once
    assert candidate_steps(7, 3, 0) == [3]
    assert candidate_steps(0, 0, 500) == []


def test_restem_finetuning_set_from_real_samples(tmp_path):
    cfg = baseline_config(tmp_path, "restem", **{"sampling.samples_per_problem": 12, "sampling.max_new_tokens": SHORT})
    ctx, params, _ = build_context(cfg)
    problems = ctx.task.load_split("train")[:6]
    with ctx.mesh_context():
        ep, rewards, metrics = sample_and_grade(ctx, params, problems, jax.random.key(5))
    cap = 2  # some problems have more correct samples than the cap, some no more
    rows, kept_metrics = finetuning_set(ep, rewards, cap, 1.0)

    expected, per_problem = [], []
    for p in range(len(problems)):  # hand count: the first `cap` correct samples of each problem
        correct = [b for b in range(len(ep.texts)) if ep.problem_index[b] == p and expected_reward(ep, b)]
        expected += correct[:cap]
        per_problem.append(len(correct))
    assert np.array_equal(rewards, [expected_reward(ep, b) for b in range(len(ep.texts))])
    # The samples exercise every case: unfinished short texts, capped problems, uncapped ones.
    assert any(not ep.finished[b] and len(ep.texts[b]) <= SHORT for b in range(len(ep.texts)))
    assert max(per_problem) > cap and min(per_problem) <= cap
    assert kept_metrics["restem/kept"] == len(expected) == sum(min(n, cap) for n in per_problem)
    assert kept_metrics["restem/problems_with_kept"] == np.mean([n > 0 for n in per_problem])
    tokens, mask = rows.batch(np.arange(len(rows)), pad_id=0)
    for i, b in enumerate(expected):  # each kept row is that episode's prompt + response
        n = ep.total_lens[b]
        assert np.array_equal(tokens[i, :n], ep.tokens[b, :n]) and not tokens[i, n:].any()
        assert np.array_equal(mask[i, :n], ep.response_mask[b, :n]) and not mask[i, n:].any()
    assert metrics["rewards/mean"] == pytest.approx(rewards.mean())


def response_logprob_sums(params, model_cfg, ep, temperature) -> np.ndarray:
    """f64[B]: Σ log softmax(logits / T) over each episode's response tokens, in numpy from one
    forward of the sampled rows (causal: the right padding does not reach the response)."""
    logits, _ = jax.jit(llama.forward, static_argnums=1)(params, model_cfg, ep.tokens)
    z = np.asarray(logits, np.float64) / temperature  # [B, W, V]
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    return np.array([sum(logp[b, t - 1, ep.tokens[b, t]] for t in range(ep.prompt_lens[b], ep.total_lens[b]))
                     for b in range(len(ep.tokens))])


@pytest.mark.parametrize("cap,max_seq_len", [(-1, 0), (-1, 22), (3, 0)])
def test_dpo_pairs_and_reference_sums_from_real_samples(tmp_path, cap, max_seq_len):
    cfg = baseline_config(tmp_path, "dpo_positive", **{"dpo.max_pairs_per_problem": cap, "dpo.max_seq_len": max_seq_len})
    ctx, params, _ = build_context(cfg)
    problems = ctx.task.load_split("train")[:8]
    with ctx.mesh_context():
        arrays, metrics = build_pairs(ctx, params, problems, jax.random.key(5))
        ep, rewards, _ = sample_and_grade(ctx, params, problems, jax.random.key(5))  # the same samples again
    rows = TokenRows.from_arrays(arrays, "rows_")
    episode = arrays["episode_of_row"]
    pairs = episode[arrays["pairs"]]  # [P, 2] episode rows
    fits = lambda b: max_seq_len == 0 or ep.total_lens[b] <= max_seq_len

    dropped_somewhere = False
    for p in range(len(problems)):
        good = [b for b in range(len(ep.texts)) if ep.problem_index[b] == p and expected_reward(ep, b)]
        bad = [b for b in range(len(ep.texts)) if ep.problem_index[b] == p and not expected_reward(ep, b)]
        mine = [tuple(x) for x in pairs if ep.problem_index[x[0]] == p]
        if cap == -1 or len(good) * len(bad) <= cap:  # every combination, chosen-major, minus too-long ones
            want = [(g, b) for g in good for b in bad if fits(g) and fits(b)]
            assert mine == want, p
            dropped_somewhere |= len(want) < len(good) * len(bad)
        else:  # a subset of `cap` distinct combinations
            assert len(set(mine)) == len(mine) == cap
            assert all(g in good and b in bad for g, b in mine)
    assert metrics["dpo/pairs"] == len(pairs) > 0
    assert dropped_somewhere == (max_seq_len > 0)
    # The stored rows are the episodes, and the reference sums those of an independent pass.
    tokens, mask = rows.batch(np.arange(len(rows)), pad_id=0)
    for i, b in enumerate(episode):
        n = ep.total_lens[b]
        assert np.array_equal(tokens[i, :n], ep.tokens[b, :n]) and np.array_equal(mask[i, :n], ep.response_mask[b, :n])
    want = response_logprob_sums(params, ctx.model_cfg, ep, cfg.sampling.temperature)[episode]
    np.testing.assert_allclose(arrays["ref_sums"], want, rtol=1e-5, atol=1e-4)


def numbers(records):
    """The metric lines without wall-clock fields (what an exact resume must reproduce)."""
    return [{k: v for k, v in r.items() if not k.startswith("time")} for r in records]


def run_killed_then_resumed(cfg, monkeypatch, *kill_whens):
    """Run `cfg`, killed after the first checkpoint whose progress satisfies `kill_whens[0]`; resume
    it, killed at the next predicate's checkpoint, and so on; then resume it to the end."""
    real_save = Checkpointer.save
    for kill_when in kill_whens:
        def save_then_die(self, step, state, meta, wait=True, kill_when=kill_when):
            real_save(self, step, state, meta, wait)
            if kill_when(meta["progress"]):
                raise KeyboardInterrupt(f"simulated kill after saving {meta}")

        monkeypatch.setattr(Checkpointer, "save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            loop.run(cfg)
        assert not os.path.exists(os.path.join(cfg.output_dir, "hf"))
    monkeypatch.setattr(Checkpointer, "save", real_save)
    loop.run(cfg)


def test_restem_learns_selects_and_resumes_exactly(tmp_path, monkeypatch):
    straight = baseline_config(tmp_path / "a", "restem", **{"restem.early_stop": "best"})
    before = initial_params(straight)
    loop.run(straight)
    records = read_metrics(straight)
    for r in records:
        assert all(np.isfinite(v) for v in r.values() if isinstance(v, float)), r
    assert [r["iteration"] for r in records if "eval/accuracy" in r] == [0, 1, 2]

    offset = 0  # the cumulative step count before the iteration
    for it in (0, 1):
        candidates = [r for r in records if r["iteration"] == it and "select/accuracy" in r]
        steps = [r["select/step"] for r in candidates]
        total = next(r["restem/steps_per_iteration"] for r in records if r["iteration"] == it and "restem/chosen_step" in r)
        assert steps == [0] + candidate_steps(offset, total, 2)
        acc = [r["select/accuracy"] for r in candidates]
        best = int(np.argmax(acc))  # "best": the first of the most accurate
        chosen = next(r for r in records if r["iteration"] == it and "restem/chosen_step" in r)
        assert chosen["restem/chosen_step"] == steps[best] and chosen["restem/chosen_accuracy"] == acc[best]
        offset += total
        # The fine-tuning set of the iteration holds only correct responses (decoded and re-graded).
        rows = TokenRows.from_arrays(load_arrays(data_path(straight.output_dir, it)), "")
        tokens, mask = rows.batch(np.arange(len(rows)), pad_id=0)
        ctx, _, _ = build_context(straight)
        texts = [ctx.tokenizer.decode(t[m], skip_special_tokens=True) for t, m in zip(tokens, mask)]
        assert all(len(t) <= SHORT for t in texts) and len(rows) > 0
    chosen = [r["restem/chosen_step"] for r in records if "restem/chosen_step" in r]
    assert max(chosen) > 0, "no fine-tuned candidate beat its iteration's start"
    moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(exported_params(straight))))
    assert moved > 1e-4

    resumed = baseline_config(tmp_path / "b", "restem", **{"restem.early_stop": "best"})
    run_killed_then_resumed(resumed, monkeypatch,
                            lambda p: p["phase"] == "sample" and p["position"] == 1,  # between iterations
                            lambda p: p["phase"] == "train" and p["step"] == 2)  # mid-iteration 1, after a candidate
    for a, b in zip(jax.tree.leaves(exported_params(straight)), jax.tree.leaves(exported_params(resumed))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert numbers(read_metrics(resumed)) == numbers(records)


def test_restem_first_decrease_stops_at_the_first_candidate_not_better(tmp_path):
    cfg = baseline_config(tmp_path, "restem", **{"train.iterations": 1, "train.eval_every": 0,
                                                 "restem.epochs": 4, "restem.eval_every_steps": 1})
    loop.run(cfg)
    records = read_metrics(cfg)
    acc = [r["select/accuracy"] for r in records if "select/accuracy" in r]
    end = next(r for r in records if "restem/chosen_step" in r)
    # Walk as the official restem_paper_original does: move on while strictly better.
    k = 0
    while k + 1 < len(acc) and acc[k + 1] > acc[k]:
        k += 1
    assert end["restem/chosen_step"] == k and end["restem/chosen_accuracy"] == acc[k]
    stopped = k + 1 < len(acc)
    assert len(acc) == (k + 2 if stopped else end["restem/steps_per_iteration"] + 1)  # no candidate after the stop
    assert end["train/gradient_steps"] == len(acc) - 1


def test_dpo_trains_from_the_reference_and_resumes_exactly(tmp_path, monkeypatch):
    straight = baseline_config(tmp_path / "a", "dpo_positive")
    before = initial_params(straight)
    loop.run(straight)
    records = read_metrics(straight)
    steps = [r for r in records if "dpo_loss" in r]
    first, last = steps[0], steps[-1]
    assert first["iteration"] == 1
    # Step 1 runs the reference itself: the stored sums equal the policy's, so z = 0 and ℓ = log 2.
    assert first["dpo_loss"] == pytest.approx(np.log(2), abs=1e-4)
    assert abs(first["chosen_reward"]) < 1e-3 and abs(first["rejected_reward"]) < 1e-3
    pairs = next(r["dpo/pairs"] for r in records if "dpo/pairs" in r)
    assert last["iteration"] == pairs // 4 * 2 == last["train/gradient_steps"] == records[-1]["iteration"]
    assert last["dpo_margin"] > first["dpo_margin"] and last["dpo_loss"] < first["dpo_loss"]
    assert [r["iteration"] for r in records if "eval/accuracy" in r] == \
        [0] + [s for s in range(1, last["iteration"] + 1) if s % 3 == 0 or s == last["iteration"]]
    assert [r["iteration"] for r in records if "dpo/pairs" in r] == [0]  # the round, sampled once
    for r in records:
        assert all(np.isfinite(v) for v in r.values() if isinstance(v, float)), r
    moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(exported_params(straight))))
    assert moved > 1e-4

    resumed = baseline_config(tmp_path / "b", "dpo_positive")
    run_killed_then_resumed(resumed, monkeypatch, lambda p: p["position"] == 3)
    for a, b in zip(jax.tree.leaves(exported_params(straight)), jax.tree.leaves(exported_params(resumed))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert numbers(read_metrics(resumed)) == numbers(records)
