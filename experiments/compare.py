"""VinePPO against PPO, GRPO, RLOO, RestEM and DPO+ from one SFT policy, on equal gradient steps.

    python experiments/compare.py --tune --tasks arith_hard --algos vineppo,ppo,grpo,rloo   # the tuning grid
    python experiments/compare.py --tuning runs/compare/tuning.json                          # the table
    python experiments/compare.py --tasks arith --seeds 0 --algos vineppo,ppo --variants ''  # a part of it
    python experiments/compare.py --report-only --report-dir docs/compare                    # tables and plots only

Per task (`TASKS`: the arithmetic task of `make run`, and its harder variant) the SFT stage runs
once (`<root>/<task>/sft`); every method then starts from its export, with each seed of `--seeds`
(`<root>/<task>/<algo>_s<seed>`), evaluated on the test split; the `VARIANTS` rows (the K
ablation, ...) run over `--variant-seeds` as `<variant>_s<seed>`. Seeds are paired: seed s gives
every method the same problems in the same order, so the report gives VinePPO − PPO per seed at
every evaluation with a 95% t interval, each run's steps to `--threshold` accuracy, and the
collapse report of every run (vinejax.analysis.paired).

`--tune` runs the tuning grid instead (`<root>/<task>/tune/<algo>_lr<lr>_kl<β>_s<seed>`): every
online method × `--tune-lrs` × `--tune-kls` × `--tune-seeds`, on the validation split, with the
main runs' step budget; its report (tuning.md / tuning.json) scores each cell by its last
evaluations and names the choice, which `--tuning tuning.json` then applies to the main runs.
Each run is a normal run directory, so a run interrupted anywhere resumes from its checkpoint the
next time; finished runs (`compare_done.json`) are skipped. The comparison can be built over
several sittings.

Gradient-step budget: `--iterations` RL iterations of `ppo.epochs` × episodes / `ppo.episodes_per_step`
policy optimizer steps (PPO's critic steps are not counted). RestEM counts every optimizer step it
takes on its kept samples (64 per step), over all its iterations, including fine-tunings whose
later candidates it discards; DPO+ counts its steps of 64 pairs. Their iterations / pairs are
sized to reach the budget, and every curve is cut at it.

Fairness of wall-clock: `--jobs 1` runs one run at a time with every core; `--jobs N` runs N
at a time, each pinned to its own core with single-threaded XLA (same cores per run either way).
Each run's CPU time (the process's resource usage, all threads) is recorded beside wall-clock:
on a machine shared with other jobs it is the fairer clock. Curves use training time: the
run's clocks minus its held-out evaluations (vinejax.analysis.curves). The runs share JAX's
persistent compilation cache (`--xla-cache`): a method's first run compiles its programs, the
later ones load them (about 40 CPU s less per run here); `--xla-cache ''` compiles in every run.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "configs"))
from arith_hard_sft import HARD_OPTIONS  # noqa: E402

from vinejax.analysis.curves import CLOCKS, run_curve, summarize  # noqa: E402
from vinejax.analysis.paired import collapse_report, paired_differences, steps_to_threshold  # noqa: E402
from vinejax.train.metrics import read_metrics  # noqa: E402

RUN_PY = os.path.join(ROOT, "experiments", "run.py")
DONE, USAGE, LOCK = "compare_done.json", "compare_usage.jsonl", "compare.lock"
SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


@dataclass(frozen=True)
class Task:
    """A task of the comparison: its SFT config and the task options every stage applies."""

    sft_config: str
    options: dict = field(default_factory=dict)
    dpo_pairs_per_problem: float = 5.0  # DPO+'s measured pair yield from the SFT policy (sizes its run)


TASKS = {
    "arith": Task("configs/arith_sft.py"),  # 3 operations, carries dropped at any line (make run's task)
    # 5 operations, only * carries dropped; 0.63-0.73 pairs per problem measured (a confident SFT policy)
    "arith_hard": Task("configs/arith_hard_sft.py", HARD_OPTIONS, dpo_pairs_per_problem=0.6),
}
ALGOS = {"vineppo": "configs/arith_vineppo.py", "ppo": "configs/arith_ppo.py", "grpo": "configs/arith_grpo.py",
         "rloo": "configs/arith_rloo.py", "restem": "configs/arith_restem.py", "dpo": "configs/arith_dpo.py"}
REFERENCE = "ppo"  # the method whose peak the others race to
TUNABLE = ("vineppo", "ppo", "grpo", "rloo")  # the online methods `--tune` chooses lr / KL β for


@dataclass(frozen=True)
class Variant:
    """A row beside the main methods: `algo`'s tuned settings (its `ALGOS` config unless `config`
    is given) with `overrides`; `lr_scale` multiplies the tuned learning rate (LoRA's adapters
    train at 10x the full model's, as configs/arith_vineppo_lora.py)."""

    algo: str
    overrides: dict
    config: str = ""
    lr_scale: float = 1.0


# Run with `--variants`, over `--variant-seeds`.
VARIANTS = {"vineppo_k1": Variant("vineppo", {"vineppo.num_rollouts": 1}),
            "vineppo_k3": Variant("vineppo", {"vineppo.num_rollouts": 3}),
            "vineppo_alloc": Variant("vineppo", {"vineppo.allocation.enabled": True}),
            "vineppo_lora": Variant("vineppo", {}, config="configs/arith_vineppo_lora.py", lr_scale=10.0)}
LABELS = {"vineppo": "VinePPO (K 9)", "ppo": "PPO", "grpo": "GRPO", "rloo": "RLOO", "restem": "RestEM",
          "dpo": "DPO+", "vineppo_k1": "VinePPO K 1", "vineppo_k3": "VinePPO K 3", "vineppo_k9": "VinePPO K 9",
          "vineppo_alloc": "VinePPO, allocation", "vineppo_lora": "VinePPO, LoRA r 8"}


@dataclass(frozen=True)
class Run:
    """One training run: where it lives, its config file and command-line overrides."""

    task: str
    name: str  # "sft", "<algo>_s<seed>" or "vineppo_k<K>_s<seed>"
    config: str
    overrides: tuple  # ((key, value), ...) passed as --config.key=value

    def directory(self, root: str) -> str:
        return os.path.join(root, self.task, self.name)


def scale_overrides(algo: str, task: Task, iterations: int, steps_per_iteration: int, args) -> dict:
    """Config overrides that size one method's run on `task` to the step budget and the eval protocol."""
    budget = iterations * steps_per_iteration
    common = {"task.num_eval_problems": args.eval_problems, "eval.samples_per_problem": args.eval_samples,
              "eval.greedy": False, "train.time_budget_minutes": 0.0}
    if algo == "restem":  # ~35-45 steps per iteration at this scale (early stop); one more iteration crosses the budget
        return common | {"train.iterations": max(1, -(-budget // 40) + 1), "train.eval_every": 1,
                         "restem.eval_every_steps": 16}
    if algo == "dpo":  # 3 epochs of ⌊pairs / 64⌋ steps; the task's pairs per problem
        problems = int(np.ceil(budget * 64 / (3 * task.dpo_pairs_per_problem)))
        return common | {"sampling.problems_per_iteration": max(16, problems),
                         "dpo.eval_every_steps": args.eval_every * steps_per_iteration,
                         "train.checkpoint_every": args.eval_every * steps_per_iteration}
    return common | {"train.iterations": iterations, "train.eval_every": args.eval_every,
                     "train.checkpoint_every": args.eval_every}


def task_options(task: str, args) -> tuple:
    """The task's own options and the `--set` overrides, as (key, value) pairs."""
    return tuple((f"task.options.{k}", v) for k, v in TASKS[task].options.items()) + tuple(args.set)


def tune_name(algo: str, lr: float, kl: float, seed: int) -> str:
    """Run name of one cell of the tuning grid (under `<task>/tune/`)."""
    return f"tune/{algo}_lr{lr:g}_kl{kl:g}_s{seed}"


def tune_plan(args) -> list[Run]:
    """The tuning grid: every online method of `args.algos` × `--tune-lrs` × `--tune-kls` ×
    `--tune-seeds`, evaluated on the validation split, with the same step budget as the main runs."""
    runs = [Run(task, "sft", TASKS[task].sft_config, task_options(task, args) + tuple(args.sft_set))
            for task in args.tasks]
    for seed in args.tune_seeds:
        for task in args.tasks:
            for algo in (a for a in args.algos if a in TUNABLE):
                for lr in args.tune_lrs:
                    for kl in args.tune_kls:
                        over = scale_overrides(algo, TASKS[task], args.iterations, args.steps_per_iteration, args)
                        over |= {"optim.lr": lr, "ppo.kl_coef": kl,
                                                                "eval.splits": "('validation',)", "seed": seed}
                        runs.append(Run(task, tune_name(algo, lr, kl, seed), ALGOS[algo],
                                        tuple(over.items()) + task_options(task, args)))
    return runs


def tuned(args, task: str, algo: str) -> dict:
    """The learning rate and KL β `--tuning` chose for `algo` on `task` ({} = the config's own)."""
    return args.tuning.get("tasks", {}).get(task, {}).get(algo, {}).get("choice", {})


def plan(args) -> list[Run]:
    """Every run of the comparison, in the order they should run: the SFT stages, then per seed
    every method on every task, then the variants (`VARIANTS`: the K ablation, ...). Main runs are
    evaluated on the test split, with the `--tuning` choices of their method."""
    runs = [Run(task, "sft", TASKS[task].sft_config, task_options(task, args) + tuple(args.sft_set))
            for task in args.tasks]
    test = {"eval.splits": "('test',)"}
    for seed in args.seeds:
        for algo in args.algos:
            for task in args.tasks:
                over = scale_overrides(algo, TASKS[task], args.iterations, args.steps_per_iteration, args)
                over |= test | tuned(args, task, algo) | {"seed": seed}
                runs.append(Run(task, f"{algo}_s{seed}", ALGOS[algo], tuple(over.items()) + task_options(task, args)))
    for seed in args.variant_seeds:
        for task in args.tasks:
            for name in args.variants:
                v = VARIANTS[name]
                over = scale_overrides(v.algo, TASKS[task], args.iterations, args.steps_per_iteration, args)
                over |= test | tuned(args, task, v.algo) | {"seed": seed} | v.overrides
                if "optim.lr" in over:
                    over["optim.lr"] *= v.lr_scale
                runs.append(Run(task, f"{name}_s{seed}", v.config or ALGOS[v.algo],
                                tuple(over.items()) + task_options(task, args)))
    return runs


def command(run: Run, root: str) -> list[str]:
    """The experiments/run.py command line of a run (RL runs start from their task's SFT export)."""
    over = dict(run.overrides) | {"output_dir": run.directory(root)}
    if run.name != "sft":
        over["model.init_from"] = os.path.join(root, run.task, "sft")
    return [sys.executable, RUN_PY, "--config", os.path.join(ROOT, run.config)] + [
        f"--config.{k}={v}" for k, v in over.items()]


def git_commit() -> str:
    """HEAD of the checkout, with "+dirty" when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT).returncode != 0
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def is_done(run_dir: str) -> bool:
    return os.path.exists(os.path.join(run_dir, DONE))


def execute(run: Run, root: str, cpu: int | None, log, xla_cache: str = "") -> bool:
    """Run (or resume) one run in a child process; record its wall-clock and CPU usage.

    `cpu`: pin the child to this core with single-threaded XLA; None = every core, XLA's threads.
    `xla_cache`: JAX's persistent compilation cache directory for the child ("" = none).
    """
    run_dir = run.directory(root)
    os.makedirs(run_dir, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if xla_cache:  # keyed by program, jax version and XLA flags, so pinned and unpinned runs never mix
        env["JAX_COMPILATION_CACHE_DIR"] = os.path.abspath(xla_cache)
    pin = None
    if cpu is not None:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + SINGLE_THREAD_XLA).strip()
        pin = lambda: os.sched_setaffinity(0, {cpu})
    cmd = command(run, root)
    log(f"start {run.task}/{run.name}" + ("" if cpu is None else f" on cpu {cpu}"))
    started = time.time()
    with open(os.path.join(run_dir, "compare.log"), "a") as out:
        out.write(" ".join(cmd) + "\n")
        out.flush()
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, preexec_fn=pin)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own resource usage
        child.returncode = os.waitstatus_to_exitcode(status)
    record = {"start": started, "wall": time.time() - started, "cpu_user": usage.ru_utime,
              "cpu_system": usage.ru_stime, "max_rss_mb": usage.ru_maxrss / 1024, "exit": child.returncode,
              "pinned_cpu": cpu, "xla_cache": bool(xla_cache), "commit": git_commit(), "command": cmd}
    with open(os.path.join(run_dir, USAGE), "a") as f:
        f.write(json.dumps(record) + "\n")
    if child.returncode != 0:
        log(f"FAILED {run.task}/{run.name} (exit {child.returncode}; see {run_dir}/compare.log)")
        return False
    sittings = [json.loads(line) for line in open(os.path.join(run_dir, USAGE))]
    done = {"commit": record["commit"], "sittings": len(sittings), "wall": sum(s["wall"] for s in sittings),
            "cpu": sum(s["cpu_user"] + s["cpu_system"] for s in sittings)}
    with open(os.path.join(run_dir, DONE), "w") as f:
        json.dump(done, f, indent=1)
    log(f"done {run.task}/{run.name}: {done['wall']:.0f} s wall, {done['cpu']:.0f} s CPU")
    return True


def take_locks(root: str, tasks: list[str]) -> list[str]:
    """One runner per task: refuse while another live compare.py holds one of the tasks' locks.
    Returns the lock files taken."""
    paths = [os.path.join(root, task, LOCK) for task in tasks]
    for path in paths:
        if os.path.exists(path):
            pid = int(open(path).read().strip() or 0)
            try:
                os.kill(pid, 0)
                raise SystemExit(f"error: compare.py (pid {pid}) is already running this task (lock {path})")
            except (ProcessLookupError, PermissionError):
                pass  # a stale lock
    for path in paths:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(str(os.getpid()))
    return paths


def run_all(runs: list[Run], root: str, jobs: int, log, xla_cache: str = "") -> list[str]:
    """Run every unfinished run, `jobs` at a time; RL runs wait for their task's SFT (`execute`
    for `xla_cache`). Returns the names of failed runs."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    free = list(cpus[:jobs]) if jobs > 1 else [None]
    slot_lock, failed = threading.Condition(), []
    sft_done: dict[str, threading.Event] = {}
    for r in runs:
        if r.name == "sft":
            sft_done[r.task] = threading.Event()
            if is_done(r.directory(root)):
                sft_done[r.task].set()

    turn = [0]  # runs take free slots in plan order (seed 0 of every method before seed 1, ...)

    def job(index: int, r: Run):
        if r.name != "sft":
            sft_done[r.task].wait()
        with slot_lock:
            while not free or turn[0] != index:
                slot_lock.wait()
            turn[0] += 1
            cpu = free.pop(0)
            slot_lock.notify_all()
        if r.name != "sft" and not is_done(os.path.join(root, r.task, "sft")):
            failed.append(f"{r.task}/{r.name} (no SFT)")
            with slot_lock:
                free.append(cpu)
                slot_lock.notify_all()
            return
        try:
            if not execute(r, root, cpu, log, xla_cache):
                failed.append(f"{r.task}/{r.name}")
        finally:
            with slot_lock:
                free.append(cpu)
                slot_lock.notify_all()
            if r.name == "sft":
                sft_done[r.task].set()

    todo = [r for r in runs if not is_done(r.directory(root))]
    log(f"{len(runs) - len(todo)} of {len(runs)} runs already finished; {len(todo)} to run, {max(jobs, 1)} at a time")
    # Threads for every run: an RL run's thread waits on its SFT without holding a slot.
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(len(todo), 1)) as pool:
        list(pool.map(job, range(len(todo)), todo))
    return failed


# ---------------------------------------------------------------- report


def load_curves(root: str, task: str, names: list[str], budget: int) -> dict:
    """{method: [Curve per finished seed]} for the given method names (prefix of `<name>_s<seed>`)."""
    out = {}
    task_dir = os.path.join(root, task)
    for name in names:
        runs = sorted(d for d in os.listdir(task_dir) if d.rsplit("_s", 1)[0] == name and is_done(os.path.join(task_dir, d)))
        if runs:
            out[name] = [run_curve(read_metrics(os.path.join(task_dir, d, "metrics.jsonl")), budget) for d in runs]
    return out


def run_cpu_totals(root: str, task: str) -> dict:
    """{run name: its compare_done.json} (total wall and CPU of the finished runs)."""
    task_dir = os.path.join(root, task)
    return {d: json.load(open(os.path.join(task_dir, d, DONE))) for d in sorted(os.listdir(task_dir))
            if is_done(os.path.join(task_dir, d))}


def plot_curves(curves: dict, title: str, path: str) -> str:
    """Mean ± std band of held-out accuracy against steps, training wall-clock and CPU seconds."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    for name, runs in curves.items():
        n = min(len(c.accuracy) for c in runs)
        acc = np.stack([c.accuracy[:n] for c in runs])  # [R, n]
        mean, std = acc.mean(0), acc.std(0)
        for ax, clock in zip(axes, CLOCKS):
            x = np.stack([c.clock(clock)[:n] for c in runs]).mean(0)
            line, = ax.plot(x, mean, marker="o", ms=3, label=f"{LABELS.get(name, name)} ({len(runs)})")
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.18)
    for ax, xlabel in zip(axes, ("policy gradient steps", "training wall-clock (s)", "training CPU time (s)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def fmt_reach(summary: dict, name: str, clock: str) -> str:
    reach = summary["methods"][name]["reach"]
    return "never" if reach is None else f"{reach[clock]:.0f}"


def table(summary: dict, run_cpu: dict) -> str:
    """Markdown rows: peak and final accuracy (mean ± std over seeds), when the mean curve first
    reaches the reference's peak (steps, training wall-clock, training CPU), and the whole runs'
    mean CPU time (`run_cpu`: {method: seconds})."""
    ref = LABELS.get(summary["reference"], summary["reference"])
    lines = [f"| method | seeds | peak acc. | final acc. | steps to {ref} peak ({summary['target']:.3f}) | "
             "train wall-clock s | train CPU s | CPU s per run |", "|---|---|---|---|---|---|---|---|"]
    for name, m in summary["methods"].items():
        lines.append(f"| {LABELS.get(name, name)} | {m['runs']} | {m['peak']['mean']:.3f} ± {m['peak']['std']:.3f} | "
                     f"{m['final']['mean']:.3f} ± {m['final']['std']:.3f} | {fmt_reach(summary, name, 'steps')} | "
                     f"{fmt_reach(summary, name, 'wall')} | {fmt_reach(summary, name, 'cpu')} | "
                     f"{run_cpu.get(name, float('nan')):.0f} |")
    return "\n".join(lines)


def speedups(summary: dict, method: str) -> dict | None:
    """How many times fewer steps / less training wall-clock / CPU `method` needs than the
    reference to reach the reference's peak (None when either never does)."""
    reach = summary["methods"].get(method, {}).get("reach")
    ref = summary["methods"][summary["reference"]]["reach"]
    if reach is None or ref is None:
        return None
    return {clock: ref[clock] / reach[clock] if reach[clock] > 0 else float("inf") for clock in CLOCKS}


def method_cpu(runs: dict) -> dict:
    """{method: mean CPU seconds of its finished runs} from {run name: compare_done.json}."""
    by_method: dict = {}
    for name, done in runs.items():
        if done.get("cpu") is None:  # adopted from elsewhere: not measured here
            continue
        by_method.setdefault(name.rsplit("_s", 1)[0], []).append(done["cpu"])
    return {k: float(np.mean(v)) for k, v in by_method.items()}


def report(args, log) -> dict:
    """Tables (markdown + JSON) and plots of every finished run, in `args.report_dir`."""
    budget = args.iterations * args.steps_per_iteration
    os.makedirs(args.report_dir, exist_ok=True)
    out, md = {"budget_steps": budget, "commit": git_commit(), "tasks": {}}, []
    for task in args.tasks:
        if not os.path.isdir(os.path.join(args.root, task)):
            continue
        entry = {"runs": run_cpu_totals(args.root, task)}
        cpu_of = method_cpu(entry["runs"])
        curves = load_curves(args.root, task, list(args.algos), budget)
        if REFERENCE in curves:
            entry["main"] = summarize(curves, REFERENCE)
            entry["main_png"] = plot_curves(curves, f"{task}: held-out accuracy, mean ± std over seeds",
                                            os.path.join(args.report_dir, f"{task}_curves.png"))
            md += [f"### {task}: methods (budget {budget} gradient steps)", "", table(entry["main"], cpu_of), ""]
            entry["vineppo_speedup"] = speedups(entry["main"], "vineppo")
            if entry["vineppo_speedup"]:
                words = {"steps": "fewer gradient steps", "wall": "less training wall-clock", "cpu": "less training CPU"}
                md += ["VinePPO reaches PPO's peak with " + ", ".join(
                    f"{v:.2f}x {words[k]}" for k, v in entry["vineppo_speedup"].items()) + ".", ""]
        variants = load_curves(args.root, task, ["vineppo"] + list(args.variants), budget)
        if len(variants) > 1 and "vineppo" in variants:
            entry["variants"] = summarize(variants, "vineppo")
            entry["variants_png"] = plot_curves(variants, f"{task}: VinePPO variants",
                                                os.path.join(args.report_dir, f"{task}_variants.png"))
            md += [f"### {task}: VinePPO variants", "", table(entry["variants"], cpu_of), ""]
        entry["paired"], lines = paired_section(args, task, budget)
        md += lines
        entry["collapses"], lines = collapse_section(args.root, task)
        md += lines
        cpu = [r["cpu"] for r in entry["runs"].values() if r.get("cpu") is not None]
        md += [f"{len(cpu)} finished runs on {task}: {sum(cpu) / 3600:.2f} CPU hours in all.", ""]
        out["tasks"][task] = entry
    with open(os.path.join(args.report_dir, "results.json"), "w") as f:
        json.dump(out, f, indent=1, default=float)
    with open(os.path.join(args.report_dir, "results.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    log(f"report: {os.path.join(args.report_dir, 'results.md')}\n" + "\n".join(md))
    return out


def seed_curves(root: str, task: str, name: str, budget: int) -> dict:
    """{seed: Curve} of the finished `<name>_s<seed>` runs of a task."""
    task_dir, out = os.path.join(root, task), {}
    for d in sorted(os.listdir(task_dir)):
        base, _, seed = d.rpartition("_s")
        if base == name and seed.isdigit() and is_done(os.path.join(task_dir, d)):
            out[int(seed)] = run_curve(read_metrics(os.path.join(task_dir, d, "metrics.jsonl")), budget)
    return out


def paired_section(args, task: str, budget: int) -> tuple[dict, list[str]]:
    """VinePPO − each other method of `--algos`, per paired seed at every evaluation (mean, 95% t
    interval), and every method's steps to `--threshold` accuracy, per seed. ({}, []) when no
    other method shares a seed with VinePPO."""
    curves = {name: seed_curves(args.root, task, name, budget) for name in args.algos}
    vine = curves.get("vineppo", {})
    against = {name: paired_differences(vine, c) for name, c in curves.items() if name != "vineppo" and set(vine) & set(c)}
    if not against:
        return {}, []
    md = []
    for name, diffs in against.items():
        md += [f"### {task}: VinePPO − {LABELS.get(name, name)}, paired by seed ({diffs[0].seeds} seeds)", "",
               "| steps | mean difference | 95% t interval | per seed |", "|---|---|---|---|"]
        md += [f"| {d.steps:.0f} | {d.mean:+.3f} | " + ("—" if np.isnan(d.low) else f"[{d.low:+.3f}, {d.high:+.3f}]")
               + " | " + " / ".join(f"{x:+.3f}" for x in d.values) + " |" for d in diffs] + [""]
    reach = {name: {s: steps_to_threshold(c, args.threshold) for s, c in cs.items()} for name, cs in curves.items() if cs}
    show = lambda v: "never" if v is None else f"{v:.0f}"
    md += [f"Steps to {args.threshold:.2f} held-out accuracy, per seed: " + "; ".join(
        f"{LABELS.get(n, n)} " + " / ".join(show(r[s]) for s in sorted(r)) for n, r in reach.items()), ""]
    return {"against": {n: [d.__dict__ for d in diffs] for n, diffs in against.items()},
            "threshold": args.threshold, "steps_to_threshold": reach}, md


def collapse_section(root: str, task: str) -> tuple[dict, list[str]]:
    """The collapse report of every finished RL run of a task; a table of those that collapsed."""
    task_dir, out = os.path.join(root, task), {}
    for d in sorted(os.listdir(task_dir)):
        if d != "sft" and is_done(os.path.join(task_dir, d)):
            try:
                out[d] = collapse_report(read_metrics(os.path.join(task_dir, d, "metrics.jsonl"))).__dict__
            except ValueError:  # DPO+ / RestEM runs keep no per-iteration PPO records
                continue
    bad = {d: r for d, r in out.items() if r["collapsed"]}
    md = [f"### {task}: collapses and dips of the training reward ({len(bad)} of {len(out)} runs)", ""]
    if bad:
        md += ["| run | what | max KL (iter.) | ratio / clip frac. there | max ratio | ratio rule fired | "
               "non-finite guard fired |", "|---|---|---|---|---|---|---|"]
        md += [f"| {d} | {r['reason']} | {r['max_kl']:.2f} ({r['max_kl_iteration']}) | {r['ratio_at_max_kl']:.3f} / "
               f"{r['clipfrac_at_max_kl']:.3f} | {r['max_ratio']:.3f} | {r['ratio_rule_iterations']} iter. | "
               f"{r['nonfinite_iterations']} iter. |" for d, r in bad.items()]
        md.append("")
    return out, md


def tune_report(args, log) -> dict:
    """Per task and online method: each grid cell's validation score (the mean over tuning seeds of
    the mean accuracy over the last `--tune-last` evaluations) and the best cell (ties: lower lr,
    then lower β). Writes tuning.md and tuning.json in the report folder."""
    budget = args.iterations * args.steps_per_iteration
    os.makedirs(args.report_dir, exist_ok=True)
    out, md = {"budget_steps": budget, "commit": git_commit(), "score_last_evals": args.tune_last, "tasks": {}}, []
    for task in args.tasks:
        entry = out["tasks"].setdefault(task, {})
        for algo in (a for a in args.algos if a in TUNABLE):
            cells = []
            for lr in args.tune_lrs:
                for kl in args.tune_kls:
                    dirs = [os.path.join(args.root, task, tune_name(algo, lr, kl, s)) for s in args.tune_seeds]
                    curves = [run_curve(read_metrics(os.path.join(d, "metrics.jsonl")), budget) for d in dirs if is_done(d)]
                    if curves:
                        scores = [float(c.accuracy[-args.tune_last:].mean()) for c in curves]
                        cells.append({"lr": lr, "kl": kl, "seeds": len(curves), "score": float(np.mean(scores)),
                                      "scores": scores, "final": [float(c.accuracy[-1]) for c in curves]})
            if not cells:
                continue
            best = max(cells, key=lambda c: (round(c["score"], 6), -c["lr"], -c["kl"]))
            entry[algo] = {"cells": cells, "choice": {"optim.lr": best["lr"], "ppo.kl_coef": best["kl"]}}
            md += [f"### {task} / {LABELS.get(algo, algo)}", "", "| lr | KL β | seeds | score | per seed |",
                   "|---|---|---|---|---|"]
            md += [f"| {c['lr']:g} | {c['kl']:g} | {c['seeds']} | {c['score']:.3f}{' ←' if c is best else ''} | "
                   + " / ".join(f"{x:.3f}" for x in c["scores"]) + " |" for c in cells]
            md.append("")
    with open(os.path.join(args.report_dir, "tuning.json"), "w") as f:
        json.dump(out, f, indent=1)
    with open(os.path.join(args.report_dir, "tuning.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    log(f"tuning report: {os.path.join(args.report_dir, 'tuning.md')}\n" + "\n".join(md))
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    csv = lambda kind: (lambda s: [kind(x) for x in s.split(",") if x])
    p.add_argument("--root", default="runs/compare", help="where the run directories go")
    p.add_argument("--tasks", type=csv(str), default=list(TASKS), help=f"comma list of {', '.join(TASKS)}")
    p.add_argument("--algos", type=csv(str), default=list(ALGOS), help=f"comma list of {', '.join(ALGOS)}")
    p.add_argument("--seeds", type=csv(int), default=[0, 1, 2])
    p.add_argument("--variants", type=csv(str), default=list(VARIANTS),
                   help=f"rows beside the methods, among {', '.join(VARIANTS)}; '' = none")
    p.add_argument("--variant-seeds", type=csv(int), default=None, help="seeds of the variants (default: --seeds)")
    p.add_argument("--tuning", default="", metavar="JSON",
                   help="a tuning.json written by --tune: each method's runs use its chosen lr and KL β")
    p.add_argument("--iterations", type=int, default=20, help="RL iterations; the step budget is this × steps per iteration")
    p.add_argument("--steps-per-iteration", type=int, default=8, help="policy steps per RL iteration of the arith configs")
    p.add_argument("--eval-every", type=int, default=4, help="RL iterations between held-out evaluations")
    p.add_argument("--eval-problems", type=int, default=300)
    p.add_argument("--eval-samples", type=int, default=4)
    p.add_argument("--threshold", type=float, default=0.85, help="the report's steps-to-accuracy threshold")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time; > 1 pins each to one core, single-threaded XLA")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra overrides for every run")
    p.add_argument("--sft-set", nargs="*", default=[], metavar="KEY=VALUE", help="extra overrides for the SFT stages")
    p.add_argument("--xla-cache", default=None, metavar="DIR",
                   help="JAX's persistent compilation cache shared by the runs (default <root>/xla_cache; '' = "
                        "none): a method's later runs reuse its compiled programs, ~40 CPU s less per run")
    p.add_argument("--tune", action="store_true",
                   help="run the tuning grid (lr × KL β × tuning seeds per online method, validation split) "
                        "instead of the main runs, and report each cell's score and the choice")
    p.add_argument("--tune-lrs", type=csv(float), default=[3e-5, 1e-4, 3e-4])
    p.add_argument("--tune-kls", type=csv(float), default=[1e-4])
    p.add_argument("--tune-seeds", type=csv(int), default=[100, 101], help="seeds of the tuning runs (not the test seeds)")
    p.add_argument("--tune-last", type=int, default=2, help="a tuning cell's score: mean accuracy of its last N evaluations")
    p.add_argument("--dry-run", action="store_true", help="print the plan (unfinished runs' commands); run nothing")
    p.add_argument("--report-only", action="store_true", help="write the report from the finished runs; run nothing")
    p.add_argument("--report-dir", default=None, help="where the tables and plots go (default: --root)")
    args = p.parse_args(argv)
    for name, given, known in (("--tasks", args.tasks, TASKS), ("--algos", args.algos, ALGOS)):
        bad = [x for x in given if x not in known]
        if bad:
            p.error(f"{name}: unknown {bad[0]!r}; choose from {', '.join(known)}")
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        p.error(f"--variants: unknown {bad[0]!r}; choose from {', '.join(VARIANTS)}")
    args.variant_seeds = args.seeds if args.variant_seeds is None else args.variant_seeds
    try:
        args.tuning = json.load(open(args.tuning)) if args.tuning else {}
    except (OSError, ValueError) as e:
        p.error(f"--tuning: cannot read {args.tuning}: {e}")
    split = lambda pairs: [tuple(s.split("=", 1)) for s in pairs]
    args.set, args.sft_set = split(args.set), split(args.sft_set)
    args.report_dir = args.report_dir or args.root
    args.xla_cache = os.path.join(args.root, "xla_cache") if args.xla_cache is None else args.xla_cache
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    log = lambda msg: print(time.strftime("%H:%M:%S ") + msg + "\n", end="", flush=True)  # one write: runs' threads log
    failed = []
    if args.dry_run:
        for r in (tune_plan if args.tune else plan)(args):
            print(("done " if is_done(r.directory(args.root)) else "todo ") + " ".join(command(r, args.root)[1:]))
        return 0
    if not args.report_only:
        locks = take_locks(args.root, args.tasks)
        try:
            failed = run_all((tune_plan if args.tune else plan)(args), args.root, args.jobs, log, args.xla_cache)
        finally:
            for path in locks:
                os.remove(path)
    (tune_report if args.tune else report)(args, log)
    if failed:
        log("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
