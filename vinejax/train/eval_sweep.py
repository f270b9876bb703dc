"""The evaluation command (`experiments/evaluate.py`): the protocol of `train.evaluate` applied to
an HF model folder, a run's exported policy, or a run's checkpoints (the paper's checkpoint sweep).

Outputs under `out`, for each (checkpoint, split): `<split>/<label>.json` (model, checkpoint,
settings, metrics) and `<split>/<label>.predictions.jsonl` (one record per problem: samples,
extracted answers, verdicts, lengths, finish reasons); for a sweep, `accuracy.png` (accuracy,
maj@n and pass@n against the checkpoint's step). A summary is written last and atomically, so a
(checkpoint, split) whose summary exists with the same settings is finished: a rerun skips it and
an interrupted sweep resumes where it stopped. (The same `out` for another model folder
evaluates again.)
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import ml_collections

from vinejax.checkpoint import CheckpointError
from vinejax.config import ConfigError, base_config, validate
from vinejax.config_file import apply_overrides, load_config_file
from vinejax.tasks import KNOWN_TASKS, check_name
from vinejax.train.context import build_context, hf_folder_of_run
from vinejax.train.evaluate import evaluate_split
from vinejax.train.metrics import progress
from vinejax.train.run_policy import checkpoint_dir, checkpoint_steps, is_run_dir, read_run_config, restore_policy
from vinejax.train.stage import held_out_problems, log

OFFICIAL_SEED = 42  # the official eval pipelines' seed


@dataclasses.dataclass
class EvalRequest:
    """What `experiments/evaluate.py` was asked (None: the config's value)."""

    model: str  # an HF folder or a run folder
    task: str = ""  # "" = the run's task
    splits: tuple = ("test",)
    checkpoints: str = ""  # run folder: "" = its export (else its newest checkpoint), "last", "all", "10,20"
    out: str = ""  # "" = <model>/eval
    data_dir: str | None = None
    samples: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    greedy: bool = False
    num_problems: int = 0  # the first N of each split; 0 = all (the official protocol)
    seed: int = OFFICIAL_SEED
    config_file: str = ""  # HF folder: a config file to start from (default: base_config())
    overrides: tuple = ()  # ((dotted key, raw value), ...) applied last


@dataclasses.dataclass(frozen=True)
class Target:
    """One policy to evaluate: `step` is a checkpoint of the run, None the folder's HF weights."""

    label: str
    step: int | None = None


def eval_config(req: EvalRequest) -> tuple[ml_collections.ConfigDict, str]:
    """(config, run folder or "") for the request: a run's recorded config, or `base_config()` /
    `req.config_file` for an HF folder; flags, then `req.overrides`, applied and validated."""
    if not os.path.isdir(req.model):
        raise FileNotFoundError(f"model folder not found: {req.model}")
    if req.task:
        check_name(req.task)
    if is_run_dir(req.model):
        if req.config_file:
            raise ConfigError(f"{req.model} is a run folder: its config.json is the config (drop --config FILE)")
        cfg, skipped = read_run_config(req.model)
        if skipped:
            log(f"note: {req.model}/config.json keys unknown to this version ignored: {', '.join(skipped)}")
        run_dir = req.model
    else:
        if req.checkpoints:
            raise ConfigError(f"--checkpoints needs a run folder; {req.model} has no vinejax config.json")
        if not req.task:
            raise ConfigError(f"--task is needed for the HF folder {req.model} ({', '.join(KNOWN_TASKS)} "
                              f"or a plug-in 'package.module:factory')")
        cfg = load_config_file(req.config_file) if req.config_file else base_config()
        cfg.model.hf_path, cfg.model.init_from = req.model, ""
        run_dir = ""
    if req.task and req.task != cfg.task.name:
        cfg.task.name = req.task
        cfg.task.options = ml_collections.ConfigDict()  # the other task's loader options do not apply
    if req.data_dir is not None:
        cfg.task.data_dir = req.data_dir
    cfg.eval.splits = tuple(req.splits)
    for key, value in (("samples_per_problem", req.samples), ("temperature", req.temperature), ("top_p", req.top_p)):
        if value is not None:
            cfg.eval[key] = value
    cfg.eval.greedy = req.greedy
    cfg.task.max_prompt_tokens = 0  # a training filter; the eval has none (prompts that fill the context are dropped)
    apply_overrides(cfg, list(req.overrides))
    validate(cfg, jax.device_count())
    return cfg, run_dir


def select_targets(req: EvalRequest, run_dir: str) -> list[Target]:
    """The policies `req.checkpoints` names (module docstring of experiments/evaluate.py)."""
    if not run_dir:
        return [Target("model")]
    spec = req.checkpoints
    if not spec:
        if os.path.isdir(hf_folder_of_run(run_dir)):
            return [Target("hf")]
        spec = "last"
    steps = checkpoint_steps(run_dir)
    if not steps:
        raise CheckpointError(f"no checkpoint in {checkpoint_dir(run_dir)}")
    if spec == "last":
        chosen = [steps[-1]]
    elif spec == "all":
        chosen = steps
    else:
        try:
            chosen = [int(s) for s in spec.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--checkpoints {spec!r}: expected all, last or steps like 10,20") from None
        for step in chosen:
            if step not in steps:
                raise CheckpointError(f"no checkpoint {step} in {checkpoint_dir(run_dir)} (it has {steps})")
    return [Target(f"step_{step}", step) for step in chosen]


def summary_path(out: str, split: str, label: str) -> str:
    return os.path.join(out, split, f"{label}.json")


def predictions_path(out: str, split: str, label: str) -> str:
    return os.path.join(out, split, f"{label}.predictions.jsonl")


def read_summary(path: str) -> dict | None:
    """A summary written by this module, or None when absent or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_finished(path: str, model: str, settings: dict) -> bool:
    """Whether the summary at `path` is of `model` evaluated with `settings`."""
    summary = read_summary(path) or {}
    return summary.get("model") == model and summary.get("settings") == settings


def _write_atomic(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def settings_of(ctx, req: EvalRequest) -> dict:
    """What decides the numbers (besides the policy and the split): a summary with other settings
    is evaluated again."""
    e = ctx.cfg.eval
    return {"task": ctx.task.name, "grader": ctx.task.grader, "samples": e.samples_per_problem,
            "temperature": e.temperature, "top_p": e.top_p, "max_new_tokens": e.max_new_tokens,
            "context_size": ctx.eval_context_size, "greedy": e.greedy, "seed": req.seed,
            "num_problems": req.num_problems}


def run_evaluation(req: EvalRequest) -> list[dict]:
    """Evaluate every (target, split) of the request not already done; returns all their summaries."""
    cfg, run_dir = eval_config(req)
    targets = select_targets(req, run_dir)
    out = req.out or os.path.join(req.model, "eval")
    if targets[0].step is None and run_dir:  # a run's exported policy
        cfg.model.hf_path, cfg.model.init_from = hf_folder_of_run(run_dir), ""
    ctx, params, origin = build_context(cfg, load_params=targets[0].step is None)
    writer = jax.process_index() == 0
    summaries = []
    with ctx.mesh_context():
        settings, model = settings_of(ctx, req), os.path.abspath(req.model)
        todo = [(t, s) for t in targets for s in req.splits
                if not is_finished(summary_path(out, s, t.label), model, settings)]
        log(f"evaluating {req.model} ({origin if targets[0].step is None else 'checkpoints'}) on {cfg.task.name} "
            f"{'/'.join(req.splits)}: {len(todo)} of {len(targets) * len(req.splits)} (checkpoint, split) to do, "
            f"{settings['samples']} samples at T {settings['temperature']}, top_p {settings['top_p']}; output {out}")
        problem_sets = held_out_problems(ctx, req.splits, limit=req.num_problems) if todo else {}
        bar = progress(total=len(todo), desc="checkpoints")
        for target in targets:
            splits = [s for t, s in todo if t == target]
            if not splits:
                continue
            meta = {}
            if target.step is not None:
                params, meta = restore_policy(ctx, run_dir, target.step)
            for split in splits:
                started = time.time()
                metrics, records = evaluate_split(ctx, params, problem_sets[split], jax.random.key(req.seed),
                                                  f"{target.label} {split}")
                summary = {"model": model, "label": target.label, "step": target.step,
                           "algo": cfg.algo, "checkpoint_meta": meta, "split": split,
                           "problems": len(problem_sets[split]), "settings": settings, "metrics": metrics,
                           "seconds": round(time.time() - started, 3)}
                if writer:
                    _write_atomic(predictions_path(out, split, target.label),
                                  "".join(json.dumps({"split": split} | r) + "\n" for r in records))
                    _write_atomic(summary_path(out, split, target.label), json.dumps(summary, indent=1) + "\n")
                log(f"{target.label} {split}: " + " | ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
                bar.update(1)
        bar.close()
    for target in targets:
        for split in req.splits:
            summaries.append(read_summary(summary_path(out, split, target.label)))
    steps = [s for s in summaries if s and s["step"] is not None]
    if steps and writer:
        log(f"sweep plot: {plot_sweep(steps, os.path.join(out, 'accuracy.png'))}")
    return summaries


def plot_sweep(summaries: list[dict], path: str) -> str:
    """PNG of accuracy, maj@n and pass@n against the checkpoint step, one colour per split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for position, split in enumerate(sorted({s["split"] for s in summaries})):
        rows = sorted((s for s in summaries if s["split"] == split), key=lambda s: s["step"])
        n = rows[0]["settings"]["samples"]
        for key, style in (("accuracy", "-o"), (f"maj@{n}", "--s"), (f"pass@{n}", ":^")):
            points = [(s["step"], s["metrics"][key]) for s in rows if key in s["metrics"]]
            if points:
                ax.plot(*zip(*points), style, ms=4, color=f"C{position}", label=f"{split} {key}")
    ax.set_xlabel("SFT step" if summaries[0]["algo"] == "sft" else "iteration (checkpoint)")
    ax.set_ylabel("fraction correct")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
