"""experiments/compare.py end to end at toy size: an SFT stage, then VinePPO and PPO from it (each
a real experiments/run.py child process), the report read back against the runs' own metrics,
skip-when-finished, resume of an interrupted run, and a failing run reported as failed."""
import json
import os
import shutil
import sys

import numpy as np
import pytest
from xla_flags import FAST_COMPILE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import compare  # noqa: E402

from vinejax.train.metrics import read_metrics  # noqa: E402

TINY_MODEL = ["sft.max_steps=2", "sft.batch_size=8", "sft.micro_batch=8", "model.hidden_size=32",
              "model.num_layers=1", "model.num_heads=2", "model.num_kv_heads=2", "model.intermediate_size=64",
              "eval.greedy=false", "eval.samples_per_problem=2", "task.num_eval_problems=4"]
TINY_RUNS = ["task.options.num_problems=64", "sampling.max_new_tokens=12", "eval.max_new_tokens=12",
             "sampling.problems_per_iteration=2", "sampling.samples_per_problem=4", "sampling.batch_size=8",
             "ppo.episodes_per_step=4", "ppo.micro_batch=4", "ppo.epochs=1", "vineppo.num_rollouts=2",
             "vineppo.chunk_rows=64", "train.samples_per_iteration=0"]


def compare_args(root, algos="vineppo,ppo", extra=()):
    return ["--root", root, "--tasks", "arith", "--algos", algos, "--seeds", "0", "--variants", "", "--iterations", "2",
            "--steps-per-iteration", "2", "--eval-every", "1", "--eval-problems", "4", "--eval-samples", "2",
            "--jobs", "1", "--sft-set", *TINY_MODEL, "--set", *TINY_RUNS, *extra]


@pytest.fixture(autouse=True)
def one_device_children(monkeypatch):
    """The child runs get one CPU device (conftest gives this process 8 fake ones); their
    compilation cache keeps every program, however fast it compiles."""
    monkeypatch.setenv("XLA_FLAGS", FAST_COMPILE)
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def evals(run_dir):
    return [r for r in read_metrics(os.path.join(run_dir, "metrics.jsonl")) if "eval/accuracy" in r]


@pytest.mark.slow
def test_compare_runs_reports_skips_and_resumes(tmp_path, capsys):
    root = str(tmp_path / "cmp")
    assert compare.main(compare_args(root)) == 0
    task = os.path.join(root, "arith")
    for name in ("sft", "vineppo_s0", "ppo_s0"):
        usage = [json.loads(line) for line in open(os.path.join(task, name, compare.USAGE))]
        assert len(usage) == 1 and usage[0]["exit"] == 0 and usage[0]["cpu_user"] > 0 and usage[0]["xla_cache"]
        assert json.load(open(os.path.join(task, name, compare.DONE)))["sittings"] == 1
    for name in ("vineppo_s0", "ppo_s0"):
        config = json.load(open(os.path.join(task, name, "config.json")))
        assert config["model"]["init_from"] == os.path.join(root, "arith", "sft") and config["seed"] == 0
        records = evals(os.path.join(task, name))
        assert [r["train/gradient_steps"] for r in records] == [0, 2, 4]  # 2 iterations x 2 steps
        cpu = [r["time/cpu"] for r in records]
        assert all(c > 0 for c in cpu) and cpu == sorted(cpu)
        assert all(r["time/eval_cpu"] > 0 for r in records)

    results = json.load(open(os.path.join(root, "results.json")))
    main = results["tasks"]["arith"]["main"]
    assert main["reference"] == "ppo" and set(main["methods"]) == {"vineppo", "ppo"}
    for name in ("vineppo", "ppo"):
        acc = [r["eval/accuracy"] for r in evals(os.path.join(task, f"{name}_s0"))]
        assert main["methods"][name]["peak"]["values"] == [max(acc)]
        assert main["methods"][name]["final"]["values"] == [acc[-1]]
        assert main["methods"][name]["final_steps"] == 4
    ppo_acc = [r["eval/accuracy"] for r in evals(os.path.join(task, "ppo_s0"))]
    assert main["target"] == max(ppo_acc)
    assert main["methods"]["ppo"]["reach"]["steps"] == 2 * int(np.argmax(ppo_acc))
    assert os.path.getsize(os.path.join(root, "arith_curves.png")) > 10_000
    assert "| PPO | 1 |" in open(os.path.join(root, "results.md")).read()
    cached = os.listdir(os.path.join(root, "xla_cache"))  # the runs' shared compilation cache
    assert any(name.startswith("jit_") for name in cached)

    # finished runs are skipped
    before = os.path.getmtime(os.path.join(task, "ppo_s0", "metrics.jsonl"))
    capsys.readouterr()
    assert compare.main(compare_args(root)) == 0
    assert "3 of 3 runs already finished; 0 to run" in capsys.readouterr().out
    assert os.path.getmtime(os.path.join(task, "ppo_s0", "metrics.jsonl")) == before

    # an interrupted run (killed after iteration 1: no export, no iteration-2 checkpoint, no done marker) resumes
    run = os.path.join(task, "ppo_s0")
    first = evals(run)[:2]
    os.remove(os.path.join(run, compare.DONE))
    os.remove(os.path.join(run, "done.json"))
    shutil.rmtree(os.path.join(run, "hf"))
    shutil.rmtree(os.path.join(run, "checkpoints", "2"))
    assert compare.main(compare_args(root)) == 0
    resumed = evals(run)
    untimed = lambda records: [{k: v for k, v in r.items() if not k.startswith("time")} for r in records]
    # iteration 1 is evaluated again from its checkpoint, with programs from the cache: same numbers
    assert untimed(resumed[:2]) == untimed(first)
    assert [r["train/gradient_steps"] for r in resumed] == [0, 2, 4]
    assert resumed[2]["time/cpu"] > first[1]["time/cpu"]  # the CPU clock carries over
    assert json.load(open(os.path.join(run, compare.DONE)))["sittings"] == 2
    assert os.path.isdir(os.path.join(run, "hf"))


def test_a_failing_run_is_reported_and_not_marked_done(tmp_path, capsys):
    root = str(tmp_path / "cmp")
    sft = os.path.join(root, "arith", "sft")
    os.makedirs(sft)
    with open(os.path.join(sft, compare.DONE), "w") as f:
        json.dump({"cpu": None}, f)  # an adopted SFT stage: RL runs may start (and this one fails first)
    assert compare.main(compare_args(root, "rloo", ["ppo.episodes_per_step=3"])) == 1
    out = capsys.readouterr().out
    assert "FAILED arith/rloo_s0" in out and "failed: arith/rloo_s0" in out
    assert not os.path.exists(os.path.join(root, "arith", "rloo_s0", compare.DONE))
    assert "episodes_per_step" in open(os.path.join(root, "arith", "rloo_s0", "compare.log")).read()


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "gsm8k"], "--tasks: unknown 'gsm8k'"),
    (["--algos", "vineppo,a2c"], "--algos: unknown 'a2c'"),
    (["--variants", "vineppo_k7"], "--variants: unknown 'vineppo_k7'"),
    (["--tuning", "/nonexistent/tuning.json"], "--tuning: cannot read /nonexistent/tuning.json"),
])
def test_bad_arguments_name_the_culprit(argv, message, capsys):
    with pytest.raises(SystemExit):
        compare.parse_args(argv)
    assert message in capsys.readouterr().err


def test_plan_sizes_every_method_to_the_step_budget():
    args = compare.parse_args(["--iterations", "20", "--eval-every", "4"])
    runs = {(r.task, r.name): dict(r.overrides) for r in compare.plan(args)}
    assert len(runs) == 2 * (1 + 3 * 6 + 3 * 4)  # per task: SFT, 6 methods x 3 seeds, 4 variants x 3 seeds
    assert runs[("arith", "vineppo_s1")]["train.iterations"] == 20 and runs[("arith", "vineppo_s1")]["seed"] == 1
    assert runs[("arith", "vineppo_k1_s2")]["vineppo.num_rollouts"] == 1
    assert all(o["eval.splits"] == "('test',)" for (_, name), o in runs.items() if name != "sft")
    restem, dpo = runs[("arith", "restem_s0")], runs[("arith", "dpo_s0")]
    assert restem["train.iterations"] * 40 > 160  # enough RestEM iterations to cross the 160-step budget
    assert 3 * (dpo["sampling.problems_per_iteration"] * 5) // 64 >= 160  # 3 epochs of ~5 pairs per problem
    hard_dpo = runs[("arith_hard", "dpo_s0")]  # a confident SFT policy: ~0.6 pairs per problem, more problems
    assert 3 * hard_dpo["sampling.problems_per_iteration"] * 0.6 / 64 >= 160
    hard = runs[("arith_hard", "ppo_s0")]
    assert hard["task.options.slip_ops"] == "*" and hard["task.options.num_operations"] == 5
    assert "task.options.slip_ops" not in runs[("arith", "ppo_s0")]


def test_plan_uses_the_tuning_choice_of_each_method(tmp_path):
    tuning = tmp_path / "tuning.json"
    tuning.write_text(json.dumps({"tasks": {"arith_hard": {
        "vineppo": {"choice": {"optim.lr": 3e-5, "ppo.kl_coef": 1e-3}}, "ppo": {"choice": {"optim.lr": 1e-5}}}}}))
    args = compare.parse_args(["--tasks", "arith_hard", "--algos", "vineppo,ppo,grpo", "--seeds", "0,1",
                               "--variants", "vineppo_k3,vineppo_lora", "--variant-seeds", "0", "--tuning", str(tuning)])
    runs = {r.name: dict(r.overrides) for r in compare.plan(args)}
    assert sorted(runs) == ["grpo_s0", "grpo_s1", "ppo_s0", "ppo_s1", "sft", "vineppo_k3_s0", "vineppo_lora_s0",
                            "vineppo_s0", "vineppo_s1"]
    lora = next(r for r in compare.plan(args) if r.name == "vineppo_lora_s0")
    assert lora.config == "configs/arith_vineppo_lora.py" and dict(lora.overrides)["optim.lr"] == pytest.approx(3e-4)
    assert runs["vineppo_s1"]["optim.lr"] == 3e-5 and runs["vineppo_s1"]["ppo.kl_coef"] == 1e-3
    assert runs["vineppo_k3_s0"]["optim.lr"] == 3e-5 and runs["vineppo_k3_s0"]["vineppo.num_rollouts"] == 3
    assert runs["ppo_s0"]["optim.lr"] == 1e-5 and "ppo.kl_coef" not in runs["ppo_s0"]
    assert "optim.lr" not in runs["grpo_s0"]  # not tuned: the config's own


def write_run(task_dir, name, accuracy, rewards, kl):
    """A finished run folder: per-iteration training records and an evaluation every 2 iterations."""
    run = os.path.join(task_dir, name)
    os.makedirs(run)
    with open(os.path.join(run, "metrics.jsonl"), "w") as f:
        for it, (r, k) in enumerate(zip(rewards, kl)):
            f.write(json.dumps({"iteration": it, "rewards/mean": r, "kl": k, "ratio": 1.0 + k / 10,
                                "pg_clipfrac": k / 20, "skipped": 0.0, "nonfinite": 0.0}) + "\n")
            if it % 2 == 0:
                f.write(json.dumps({"eval/accuracy": accuracy[it // 2], "train/gradient_steps": 8 * it,
                                    "time/elapsed": 10.0 * it, "time/cpu": 20.0 * it}) + "\n")
    with open(os.path.join(run, compare.DONE), "w") as f:
        json.dump({"cpu": 1.0}, f)


def test_paired_differences_steps_to_threshold_and_collapses_in_the_report(tmp_path):
    task = tmp_path / "arith_hard"
    vine = {0: [0.5, 0.8, 0.9], 1: [0.4, 0.7, 0.86], 2: [0.5, 0.9, 0.95]}
    ppo = {0: [0.5, 0.7, 0.8], 1: [0.4, 0.5, 0.3], 2: [0.5, 0.85, 0.9]}
    grpo = {0: [0.5, 0.9, 0.9], 2: [0.5, 0.6, 0.7]}  # seed 1 unfinished: pairs over seeds 0 and 2
    for s in grpo:
        write_run(str(task), f"grpo_s{s}", grpo[s], [0.5] * 5, [0.1] * 5)
    for s in vine:
        write_run(str(task), f"vineppo_s{s}", vine[s], [0.5] * 5, [0.1] * 5)
        write_run(str(task), f"ppo_s{s}", ppo[s], [0.5, 0.6, 0.2, 0.1, 0.1] if s == 1 else [0.5] * 5,
                  [0.1, 0.2, 3.5, 1.0, 1.0] if s == 1 else [0.1] * 5)
    args = compare.parse_args(["--root", str(tmp_path), "--tasks", "arith_hard", "--threshold", "0.85",
                               "--algos", "vineppo,ppo,grpo,rloo"])  # no RLOO run: no RLOO section
    paired, md = compare.paired_section(args, "arith_hard", budget=1000)
    d = np.array([[v - p for v, p in zip(vine[s], ppo[s])] for s in range(3)])  # [seeds, evals]
    assert set(paired["against"]) == {"ppo", "grpo"}
    got = paired["against"]["ppo"]
    assert [g["steps"] for g in got] == [0, 16, 32]
    np.testing.assert_allclose([g["mean"] for g in got], d.mean(0))
    half = 4.302652729911275 * d[:, 2].std(ddof=1) / np.sqrt(3)  # t_{0.975, 2}
    assert got[2]["low"] == pytest.approx(d[:, 2].mean() - half) and got[2]["high"] == pytest.approx(d[:, 2].mean() + half)
    assert paired["steps_to_threshold"] == {"vineppo": {0: 32.0, 1: 32.0, 2: 16.0}, "ppo": {0: None, 1: None, 2: 16.0},
                                            "grpo": {0: 16.0, 2: None}}
    assert "| 32 | +0.237 |" in "\n".join(md)
    g = np.array([[v - p for v, p in zip(vine[s], grpo[s])] for s in (0, 2)])
    got = paired["against"]["grpo"]
    np.testing.assert_allclose([x["values"] for x in got], g.T)
    assert got[0]["seeds"] == 2 and "VinePPO − GRPO, paired by seed (2 seeds)" in "\n".join(md)
    collapses, md = compare.collapse_section(str(tmp_path), "arith_hard")
    assert sorted(d for d, r in collapses.items() if r["collapsed"]) == ["ppo_s1"]
    assert collapses["ppo_s1"]["max_kl"] == 3.5 and collapses["ppo_s1"]["max_kl_iteration"] == 2
    assert "| ppo_s1 | training reward 0.50 -> 0.10 at iteration 3; max KL 3.50 nats at iteration 2 |" in "\n".join(md)
