"""experiments/evaluate.py end to end on a tiny random model and the arithmetic task: the numbers
equal a hand count from the predictions file, checkpoints restore exactly, an interrupted sweep
resumes without redoing a finished checkpoint, bad input ends with one line; and the in-training
eval names its metrics as plot.py expects."""
import collections
import importlib.util
import itertools
import json
import os
import shutil

import jax
import numpy as np
import pytest

from vinejax.checkpoint import Checkpointer
from vinejax.config import base_config
from vinejax.model.hf import save_hf_model
from vinejax.tasks import arithmetic
from vinejax.train import eval_sweep
from vinejax.train.context import build_context
from vinejax.train.evaluate import evaluate
from vinejax.train.iteration import init_state
from vinejax.train.run_dir import record_config
from vinejax.train.run_policy import load_run_policy
from vinejax.train.stage import held_out_problems
from vinejax.train.update import make_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES, PROBLEMS = 4, 6


def load_cli():
    spec = importlib.util.spec_from_file_location("evaluate_cli", os.path.join(ROOT, "experiments", "evaluate.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def toy_answer(response, problem):
    """A vote key a random model's responses spread over: the response length mod 3."""
    return str(len(response) % 3)


def toy_grade(response, problem):
    return float(toy_answer(response, problem) == "0")


def toy_grade_batch(responses, problems, num_workers=None):
    return np.array([toy_grade(r, p) for r, p in zip(responses, problems)], np.float32)


@pytest.fixture
def toy_grader(monkeypatch):
    """A random tiny model never solves arithmetic: grade it by a rule it meets about a third of
    the time, so every metric is a non-trivial count."""
    monkeypatch.setattr(arithmetic, "grade", toy_grade)
    monkeypatch.setattr(arithmetic, "grade_batch", toy_grade_batch)
    monkeypatch.setattr(arithmetic, "answer", toy_answer)


def tiny_run_config(output_dir):
    c = base_config()
    c.algo = "grpo"
    c.seed = 5
    c.output_dir = str(output_dir)
    c.task.options.num_operations = 2
    c.task.max_prompt_tokens = 32
    c.model.hidden_size, c.model.num_layers, c.model.num_heads, c.model.num_kv_heads = 32, 2, 2, 1
    c.model.intermediate_size, c.model.max_position_embeddings = 64, 64
    c.sampling.problems_per_iteration, c.sampling.samples_per_problem, c.sampling.batch_size = 4, 2, 8
    c.ppo.episodes_per_step, c.ppo.micro_batch = 8, 4
    c.eval.max_new_tokens = 12
    c.mesh.shape = (1, 1, 1)
    return c


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder as the training loop leaves it: config.json, RL checkpoints 1 and 2 (TrainState,
    the policy scaled per step so they differ) and the exported hf/ policy."""
    folder = tmp_path_factory.mktemp("evalrun") / "run"
    cfg = tiny_run_config(folder)
    os.makedirs(folder)
    record_config(cfg)
    ctx, params, _ = build_context(cfg)
    ckpt = Checkpointer(os.path.join(folder, "checkpoints"))
    saved = {}
    for step in (1, 2):
        scale = 1 + 0.5 * step
        state = init_state(ctx, jax.tree.map(lambda x, s=scale: x * s, params))
        ckpt.save(step, state, {"iteration": step})
        saved[step] = jax.device_get(state.params)
    ckpt.close()
    save_hf_model(params, ctx.model_cfg, os.path.join(folder, "hf"), tokenizer=ctx.tokenizer)
    return str(folder), saved


def cli_args(run, out, *extra):
    return ["--model", run, "--split", "test", "--samples", str(SAMPLES), "--num-problems", str(PROBLEMS),
            "--out", str(out), *extra]


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def brute_pass(verdicts, k):
    subsets = list(itertools.combinations(verdicts, k))
    return sum(any(s) for s in subsets) / len(subsets)


def test_checkpoint_policy_restores_exactly(run_dir):
    run, saved = run_dir
    ctx, params, meta = load_run_policy(run, 1)
    assert meta == {"iteration": 1}
    for a, b in zip(jax.tree.leaves(jax.device_get(params)), jax.tree.leaves(saved[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert ctx.cfg.algo == "grpo" and ctx.task.name == "arithmetic"


def test_sft_checkpoint_policy_restores_exactly(tmp_path):
    cfg = tiny_run_config(tmp_path / "sft")
    cfg.algo = "sft"
    cfg.sft.max_seq_len = 64
    os.makedirs(cfg.output_dir)
    record_config(cfg)
    ctx, params, _ = build_context(cfg)
    params = jax.tree.map(lambda x: x + 0.25, params)
    opt_state = jax.jit(make_optimizer(cfg.optim, 10).init)(params)
    ckpt = Checkpointer(os.path.join(cfg.output_dir, "checkpoints"))
    ckpt.save(3, (params, opt_state), {"step": 3})  # what the SFT stage saves
    ckpt.close()
    _, restored, meta = load_run_policy(cfg.output_dir)
    assert meta == {"step": 3}
    for a, b in zip(jax.tree.leaves(jax.device_get(restored)), jax.tree.leaves(jax.device_get(params))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_numbers_equal_a_hand_count_of_the_predictions(run_dir, tmp_path, toy_grader):
    run, _ = run_dir
    # 2 batches of problems (4 + 2), each graded on the host thread while the next decodes
    assert load_cli().main(cli_args(run, tmp_path, "--checkpoints", "2", "--config.mesh.shape=(2,1,1)",
                                    "--config.sampling.batch_size=4")) == 0
    summary = json.load(open(tmp_path / "test" / "step_2.json"))
    records = read_jsonl(tmp_path / "test" / "step_2.predictions.jsonl")
    assert summary["problems"] == len(records) == PROBLEMS and summary["step"] == 2
    assert [r["index"] for r in records] == list(range(PROBLEMS))
    gold = arithmetic.load_split("test", num_problems=PROBLEMS, num_operations=2)
    assert [r["problem"] for r in records] == [p.problem for p in gold]
    verdicts, majority, lengths, unfinished = [], [], [], []
    for r in records:
        samples = r["samples"]
        assert len(samples) == SAMPLES
        for s in samples:  # each stored verdict and answer is the grader's on the stored response
            assert s["correct"] == toy_grade(s["response"], None) and s["answer"] == toy_answer(s["response"], None)
        answers = [s["answer"] for s in samples]
        winner, _ = collections.Counter(answers).most_common(1)[0]  # the official vote
        majority.append(samples[answers.index(winner)]["correct"])
        assert r["majority"] == answers.index(winner)
        verdicts.append([s["correct"] for s in samples])
        lengths += [s["length"] for s in samples]
        unfinished += [s["finish"] == "length" for s in samples]
    m = summary["metrics"]
    assert m["accuracy"] == pytest.approx(np.mean(verdicts))
    assert m[f"maj@{SAMPLES}"] == pytest.approx(np.mean(majority))
    for k in (1, SAMPLES):
        assert m[f"pass@{k}"] == pytest.approx(np.mean([brute_pass(v, k) for v in verdicts]))
    assert m["length_mean"] == pytest.approx(np.mean(lengths))
    assert m["unfinished_frac"] == pytest.approx(np.mean(unfinished))
    assert 0 < m["accuracy"] < 1 and m["pass@4"] > m["pass@1"]  # the counts are not trivial
    assert any(unfinished) and max(lengths) <= 12  # length-stopped responses are graded too
    assert summary["settings"]["samples"] == SAMPLES and summary["settings"]["temperature"] == 0.35


def test_interrupted_sweep_resumes_without_redoing_a_checkpoint(run_dir, tmp_path, toy_grader, monkeypatch):
    run, _ = run_dir
    cli = load_cli()
    real = eval_sweep.evaluate_split
    calls = []

    def killed_on_the_second(*args, **kwargs):
        calls.append(args[4])
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill during the second checkpoint")
        return real(*args, **kwargs)

    monkeypatch.setattr(eval_sweep, "evaluate_split", killed_on_the_second)
    assert cli.main(cli_args(run, tmp_path, "--checkpoints", "all")) == 130  # interrupted: one line, no traceback
    first = tmp_path / "test" / "step_1.json"
    assert first.exists() and not (tmp_path / "test" / "step_2.json").exists()
    before = first.read_text(), first.stat().st_mtime_ns
    calls.clear()
    monkeypatch.setattr(eval_sweep, "evaluate_split", lambda *a, **k: calls.append(a[4]) or real(*a, **k))
    assert cli.main(cli_args(run, tmp_path, "--checkpoints", "all")) == 0
    assert calls == ["step_2 test"]  # checkpoint 1 was not evaluated again
    assert (first.read_text(), first.stat().st_mtime_ns) == before
    assert (tmp_path / "test" / "step_2.json").exists() and (tmp_path / "accuracy.png").stat().st_size > 0
    calls.clear()
    assert cli.main(cli_args(run, tmp_path, "--checkpoints", "all")) == 0 and calls == []
    assert cli.main(cli_args(run, tmp_path, "--checkpoints", "all", "--seed", "7")) == 0
    assert calls == ["step_1 test", "step_2 test"]  # other settings: evaluated again


def test_export_and_hf_folder_evaluate_the_same_policy(run_dir, tmp_path, toy_grader):
    run, _ = run_dir
    cli = load_cli()
    assert cli.main(cli_args(run, tmp_path / "a")) == 0  # a run folder without --checkpoints: its hf/
    overrides = ["--task", "arithmetic", "--config.task.options.num_operations=2", "--config.eval.max_new_tokens=12",
                 "--config.mesh.shape=(1,1,1)", "--config.sampling.batch_size=8"]
    assert cli.main(cli_args(os.path.join(run, "hf"), tmp_path / "b", *overrides)) == 0
    a = read_jsonl(tmp_path / "a" / "test" / "hf.predictions.jsonl")
    b = read_jsonl(tmp_path / "b" / "test" / "model.predictions.jsonl")
    assert a == b  # same policy, problems, settings and seed: the same samples
    assert json.load(open(tmp_path / "b" / "test" / "model.json"))["step"] is None


@pytest.mark.parametrize("case", ["missing folder", "unknown task", "unreadable checkpoint", "missing checkpoint",
                                  "checkpoints of an HF folder"])
def test_bad_input_is_one_line_naming_it(run_dir, tmp_path, capsys, case):
    run, _ = run_dir
    if case == "missing folder":
        argv, named = ["--model", str(tmp_path / "nowhere"), "--task", "arithmetic"], str(tmp_path / "nowhere")
    elif case == "unknown task":
        argv, named = ["--model", run, "--task", "chess"], "chess"
    elif case == "unreadable checkpoint":
        broken = tmp_path / "broken"
        shutil.copytree(run, broken)
        for root, _, files in os.walk(broken / "checkpoints" / "1" / "state"):
            for name in files:
                if name not in ("_METADATA", "commit_success.txt"):
                    open(os.path.join(root, name), "w").close()  # truncated
        argv, named = ["--model", str(broken), "--checkpoints", "1"], "checkpoint 1"
    elif case == "missing checkpoint":
        argv, named = ["--model", run, "--checkpoints", "7"], "no checkpoint 7"
    else:
        argv, named = ["--model", os.path.join(run, "hf"), "--task", "arithmetic", "--checkpoints", "all"], "run folder"
    code = load_cli().main(argv + ["--out", str(tmp_path / "out"), "--num-problems", "2", "--samples", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err and named in err, err


def test_in_training_eval_metric_names(run_dir, toy_grader):
    run, _ = run_dir
    ctx, params, _ = load_run_policy(run, 1)
    ctx.cfg.eval.splits = ("validation", "test")
    ctx.cfg.task.num_eval_problems = PROBLEMS
    ctx.cfg.eval.samples_per_problem = SAMPLES
    with ctx.mesh_context():
        m = evaluate(ctx, params, held_out_problems(ctx), jax.random.key(0))
    for key in ("eval/accuracy", "eval/greedy_accuracy", "eval/maj@4", "eval/pass@1", "eval/pass@4",
                "eval/length_mean", "eval/unfinished_frac", "eval/test/accuracy", "eval/test/maj@4",
                "eval/test/greedy_accuracy"):
        assert key in m and 0 <= m[key] <= 12, key
    assert not any(k.startswith("eval/validation/") for k in m)
