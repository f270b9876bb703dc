"""RestEM (expert iteration, Singh et al. 2023) as the official VinePPO code runs it.

One iteration, top to bottom (`restem_iteration`): sample the iteration's train problems with the
current policy → grade → keep the correct responses, the first `restem.max_per_problem` of each
problem → fine-tune the SFT model afresh on them (per-sequence mean NLL at the sampling
temperature, `restem.epochs` epochs, a fresh optimizer and schedule) → score candidates on the
selection split: the start (= the SFT model), every `restem.eval_every_steps` cumulative steps
and the end → the chosen candidate is the policy that samples the next iteration.

Early stopping `first_decrease` (official `restem_paper_original`) walks the candidates in order
and keeps the last one before the first that is not strictly better. Training stops at that
candidate: the later ones cannot be chosen, so the result is the official one with fewer steps.
`best` (official `choose_best`) trains to the end and keeps the most accurate candidate.

A checkpoint is written after sampling, at every candidate and at the end of each iteration; the
iteration's fine-tuning set is saved beside it, so a killed run resumes mid-iteration exactly.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from vinejax.checkpoint import Checkpointer
from vinejax.model.hf import save_hf_model
from vinejax.rl.baseline_data import restem_select
from vinejax.train import encode, update
from vinejax.train.batching import to_microbatches
from vinejax.train.context import RunContext, hf_folder_of_run
from vinejax.train.episodes import Episodes
from vinejax.train.evaluate import evaluate, evaluate_split
from vinejax.train.metrics import MetricsWriter, RunClock, Timer, summary_line
from vinejax.train.offline_data import TokenRows, load_arrays, sample_and_grade, save_arrays
from vinejax.train.stage import fitting_problems, held_out_problems, iteration_problems, log, resume, save_checked

SUMMARY_KEYS = (("reward", "rewards/mean"), ("kept", "restem/kept"), ("step", "select/step"),
                ("select", "select/accuracy"), ("chosen", "select/chosen"), ("nll", "nll"),
                ("eval", "eval/accuracy"), ("greedy", "eval/greedy_accuracy"), ("s", "time/iteration"))


@flax.struct.dataclass
class RestemState:
    """What a RestEM checkpoint holds."""

    policy: Any  # the RestEM policy: it samples the iteration; while fine-tuning, the candidate chosen so far
    params: Any  # the model being fine-tuned (the SFT params at each iteration's start)
    opt_state: Any


@dataclasses.dataclass
class Progress:
    """Where a RestEM run stands (a checkpoint's JSON meta)."""

    iteration: int = 0  # iterations completed
    phase: str = "sample"  # "sample": this iteration has not sampled yet; "train": it is fine-tuning
    step: int = 0  # optimizer steps taken in this iteration
    offset: int = 0  # the official cumulative step count at this iteration's start (candidate cadence)
    gradient_steps: int = 0  # optimizer steps taken in the whole run
    chosen_step: int = 0  # the chosen candidate of this iteration (0 = the SFT model)
    chosen_accuracy: float = 0.0
    sft_accuracy: Optional[float] = None  # the SFT model's selection accuracy (every iteration's start)
    elapsed: float = 0.0  # wall-clock seconds of the run, across resumes
    cpu: float = 0.0  # CPU seconds of the run (this process, all threads), across resumes
    saves: int = 0  # checkpoints written (their step numbers)
    records: int = 0  # metrics lines written when the checkpoint was saved


def candidate_steps(offset: int, total: int, every: int) -> list[int]:
    """Steps of an iteration (1..total) after which a candidate is scored: each step whose
    cumulative count `offset + step` is a multiple of `every` (0 = none), and the last one."""
    steps = [k for k in range(1, total + 1) if every > 0 and (offset + k) % every == 0]
    return sorted(set(steps) | ({total} if total > 0 else set()))


def selection_problems(ctx: RunContext) -> list:
    """The first `restem.num_select_problems` (0 = all) fitting problems of `restem.select_split`."""
    problems = fitting_problems(ctx, ctx.task.load_split(ctx.cfg.restem.select_split))
    n = ctx.cfg.restem.num_select_problems
    return problems[:n] if n > 0 else problems


def selection_accuracy(ctx: RunContext, params, problems: list) -> dict:
    """`select/accuracy` (mean fraction correct, the official `correct_frac`) and `select/pass@n`
    at the eval sampling settings; one fixed RNG for every candidate, as the official uses one seed."""
    out, _ = evaluate_split(ctx, params, problems, jax.random.key(ctx.cfg.seed + 2), "select", greedy=False)
    return {"select/" + k: v for k, v in out.items()}


def finetuning_set(ep: Episodes, rewards: np.ndarray, max_per_problem: int, threshold: float) -> tuple[TokenRows, dict]:
    """RestEM's fine-tuning rows: the correct responses (reward >= threshold), the first
    `max_per_problem` of each problem (`rl.baseline_data.restem_select`), and their counts."""
    kept = restem_select(rewards, ep.problem_index, max_per_problem, threshold)  # int[N] episode rows
    per_problem = np.bincount(ep.problem_index[kept], minlength=int(ep.problem_index.max()) + 1)
    metrics = {"restem/kept": len(kept), "restem/problems_with_kept": float((per_problem > 0).mean())}
    return TokenRows.from_episodes(ep, kept), metrics


def data_path(output_dir: str, iteration: int) -> str:
    """Where iteration `iteration`'s fine-tuning set is saved."""
    return os.path.join(output_dir, "restem_data", f"iteration_{iteration:04d}.npz")


def run_restem(ctx: RunContext, sft_params, writer: MetricsWriter) -> dict:
    """`train.iterations` RestEM iterations from the SFT policy `sft_params`: eval cadence,
    checkpoints (exact resume), a time budget, export of the final policy."""
    cfg, t = ctx.cfg, ctx.cfg.train
    train_problems = fitting_problems(ctx, ctx.task.load_split(cfg.task.train_split))
    eval_problems = held_out_problems(ctx) if t.eval_every > 0 else {}  # {split: problems}
    select_problems = selection_problems(ctx)
    ckpt = Checkpointer(os.path.join(cfg.output_dir, "checkpoints"), t.keep_checkpoints)
    opt_template = update.init_opt_state(update.stage_optimizer(cfg.optim, 1), sft_params, ctx.param_shardings)
    state, meta = resume(ckpt, RestemState(sft_params, sft_params, opt_template), cfg.resume, writer)
    prog = Progress(**meta)
    rng = jax.random.key(cfg.seed)
    run_clock = RunClock({"elapsed": prog.elapsed, "cpu": prog.cpu})

    def checkpoint(state: RestemState, prog: Progress) -> bool:
        """Save; True when the time budget is spent."""
        prog.saves += 1
        prog.elapsed, prog.cpu, prog.records = run_clock.elapsed(), run_clock.cpu(), writer.num_records()
        save_checked(ckpt, prog.saves, state, dataclasses.asdict(prog))
        return t.time_budget_minutes > 0 and prog.elapsed > 60 * t.time_budget_minutes

    clock = lambda: run_clock.as_metrics() | {"train/gradient_steps": prog.gradient_steps}
    log(f"RestEM: {len(train_problems)} train problems, {len(select_problems)} selection problems")
    over_budget = False
    while prog.iteration < t.iterations and not over_budget:
        it = prog.iteration
        if prog.phase == "sample" and t.eval_every > 0 and it % t.eval_every == 0:  # the policy after `it` iterations
            evaluated = evaluate(ctx, state.policy, eval_problems, jax.random.fold_in(rng, 10**6 + it))
            writer.write(it, evaluated | clock())
            log(summary_line(it, evaluated, SUMMARY_KEYS))
        problems = iteration_problems(train_problems, cfg.seed, it, cfg.sampling.problems_per_iteration)
        state, over_budget = restem_iteration(ctx, sft_params, state, prog, problems, select_problems,
                                              jax.random.fold_in(rng, it), writer, checkpoint, clock)
    if prog.iteration < t.iterations:
        log(f"time budget of {t.time_budget_minutes} min reached in iteration {prog.iteration} (step {prog.step})")
    last: dict = {}
    if t.eval_every > 0:
        last = evaluate(ctx, state.policy, eval_problems, jax.random.fold_in(rng, 10**6 + prog.iteration))
        writer.write(prog.iteration, last | clock())
        log(summary_line(prog.iteration, last, SUMMARY_KEYS))
    ckpt.close()
    if t.export_hf:
        folder = save_hf_model(state.policy, ctx.model_cfg, hf_folder_of_run(cfg.output_dir), tokenizer=ctx.tokenizer,
                               source=ctx.source)
        log(f"policy exported to {folder}")
    return last


def restem_iteration(ctx: RunContext, sft_params, state: RestemState, prog: Progress, problems: list,
                     select_problems: list, rng: jax.Array, writer: MetricsWriter, checkpoint,
                     clock) -> tuple[RestemState, bool]:
    """One RestEM iteration (or the rest of one, when resumed in its "train" phase).

    Updates `prog` in place; returns the new state (its `policy` is the chosen candidate) and
    whether the time budget ran out (then the iteration is left mid-way, checkpointed).
    """
    cfg, r, it = ctx.cfg, ctx.cfg.restem, prog.iteration
    timer = Timer()
    with timer("iteration"):
        if prog.phase == "sample":
            with timer("sample"):
                ep, rewards, metrics = sample_and_grade(ctx, state.policy, problems, rng)
            data, kept_metrics = finetuning_set(ep, rewards, r.max_per_problem, r.reward_threshold)
            save_arrays(data_path(cfg.output_dir, it), data.arrays(""))
            metrics |= kept_metrics
            if prog.sft_accuracy is None:
                prog.sft_accuracy = selection_accuracy(ctx, sft_params, select_problems)["select/accuracy"]
            # The start candidate is the SFT model; fine-tuning restarts from it with a fresh optimizer.
            params = jax.tree.map(jnp.copy, sft_params)
            state = RestemState(policy=sft_params, params=params, opt_state=state.opt_state)
            prog.phase, prog.step, prog.chosen_step, prog.chosen_accuracy = "train", 0, 0, prog.sft_accuracy
            metrics |= {"select/step": 0, "select/accuracy": prog.sft_accuracy, "select/chosen": 1.0}
            writer.write(it, metrics | timer.as_metrics() | clock())
            log(summary_line(it, metrics, SUMMARY_KEYS))
        else:  # resumed while fine-tuning: the set this iteration saved
            data = TokenRows.from_arrays(load_arrays(data_path(cfg.output_dir, it)), "")
        per_epoch = len(data) // r.batch_size  # drop_last
        total = r.epochs * per_epoch
        optimizer = update.stage_optimizer(cfg.optim, max(r.epochs * len(data) // r.batch_size, 1))
        if prog.step == 0:
            state = state.replace(opt_state=update.init_opt_state(optimizer, state.params, ctx.param_shardings))
            if checkpoint(state, prog):
                return state, True
        if total == 0:
            log(f"RestEM iteration {it}: {len(data)} kept responses < one batch of {r.batch_size}; the SFT model stays")
        candidates = candidate_steps(prog.offset, total, r.eval_every_steps)
        pad = encode.pad_token_id(ctx.tokenizer)
        step_metrics = []
        with timer("train"):
            while prog.step < total:
                epoch, within = divmod(prog.step, per_epoch)
                order = np.random.default_rng([cfg.seed, it, epoch, 11]).permutation(len(data))
                tokens, mask = data.batch(order[within * r.batch_size : (within + 1) * r.batch_size], pad)  # [b, T]
                tok_mb, mask_mb = to_microbatches(ctx.mesh, (tokens, mask), r.micro_batch)  # [M, mb, T]
                params, opt_state, m = update.sft_step(
                    state.params, state.opt_state, tok_mb, mask_mb, model_cfg=ctx.model_cfg, optimizer=optimizer,
                    temperature=cfg.sampling.temperature)
                state = state.replace(params=params, opt_state=opt_state)
                prog.step += 1
                prog.gradient_steps += 1
                step_metrics.append(m)
                if prog.step not in candidates:
                    continue
                select = selection_accuracy(ctx, state.params, select_problems)
                better = select["select/accuracy"] > prog.chosen_accuracy
                if better:
                    state = state.replace(policy=jax.tree.map(jnp.copy, state.params))
                    prog.chosen_step, prog.chosen_accuracy = prog.step, select["select/accuracy"]
                fetched = jax.device_get(step_metrics)
                metrics = {k: float(np.mean([s[k] for s in fetched])) for k in fetched[0]}
                metrics |= select | {"select/step": prog.step, "select/chosen": float(better)}
                step_metrics = []
                writer.write(it, metrics | clock())
                log(summary_line(it, metrics, SUMMARY_KEYS))
                if not better and r.early_stop == "first_decrease":
                    break  # the official rule never looks past the first candidate that is not better
                if prog.step < total and checkpoint(state, prog):
                    return state, True
    log(f"RestEM iteration {it}: chose the candidate at step {prog.chosen_step} of {total} "
        f"(selection accuracy {prog.chosen_accuracy:.4f})")
    writer.write(it, {"restem/chosen_step": prog.chosen_step, "restem/chosen_accuracy": prog.chosen_accuracy,
                      "restem/steps_per_iteration": total} | timer.as_metrics() | clock())
    prog.iteration, prog.phase, prog.step, prog.offset = it + 1, "sample", 0, prog.offset + total
    return state, checkpoint(state, prog)
