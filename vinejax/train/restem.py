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

As a stage (`RestemStage`) an iteration is a sequence of steps: the sampling, each optimizer step
(a candidate scored after the steps that reach one), and the choice. A checkpoint is written after
sampling, at every candidate and at the end of each iteration; the iteration's fine-tuning set is
saved beside it, so a stopped run resumes mid-iteration exactly.
"""
from __future__ import annotations

import os
import time
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from vinejax.rl.baseline_data import restem_select
from vinejax.train import encode, update
from vinejax.train.batching import to_microbatches
from vinejax.train.context import RunContext
from vinejax.train.episodes import Episodes
from vinejax.train.evaluate import evaluate, evaluate_split
from vinejax.train.metrics import Timer
from vinejax.train.offline_data import TokenRows, load_arrays, sample_and_grade, save_arrays
from vinejax.train.runner import StepResult
from vinejax.train.stage import fitting_problems, held_out_problems, iteration_problems, log

SUMMARY_KEYS = (("reward", "rewards/mean"), ("kept", "restem/kept"), ("step", "select/step"),
                ("select", "select/accuracy"), ("chosen", "select/chosen"), ("nll", "nll"),
                ("eval", "eval/accuracy"), ("greedy", "eval/greedy_accuracy"), ("s", "time/iteration"))


@flax.struct.dataclass
class RestemState:
    """What a RestEM checkpoint holds."""

    policy: Any  # the RestEM policy: it samples the iteration; while fine-tuning, the candidate chosen so far
    params: Any  # the model being fine-tuned (the SFT params at each iteration's start)
    opt_state: Any


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


class RestemStage:
    """`train.iterations` RestEM iterations from the SFT policy `sft_params`. Its position counts
    iterations; its progress also says where the current one stands (`initial_progress`)."""

    unit, label, summary_keys = "iteration", "it", SUMMARY_KEYS

    def __init__(self, ctx: RunContext, sft_params):
        cfg, t = ctx.cfg, ctx.cfg.train
        self.ctx, self.sft_params = ctx, sft_params
        self.train_problems = fitting_problems(ctx, ctx.task.load_split(cfg.task.train_split))
        self.eval_problems = held_out_problems(ctx) if t.eval_every > 0 else {}  # {split: problems}
        self.select_problems = selection_problems(ctx)
        self.rng = jax.random.key(cfg.seed)
        self.pad = encode.pad_token_id(ctx.tokenizer)
        self.eval_every = t.eval_every if t.eval_every > 0 else None
        self.checkpoint_every = 0  # after sampling, at each candidate and at each iteration's end
        self._data = (-1, None)  # (iteration, its fine-tuning set)
        log(f"RestEM: {len(self.train_problems)} train problems, {len(self.select_problems)} selection problems")

    def initial_state(self) -> RestemState:
        template = update.init_opt_state(update.stage_optimizer(self.ctx.cfg.optim, 1), self.sft_params,
                                         self.ctx.param_shardings)
        return RestemState(self.sft_params, self.sft_params, template)

    def initial_progress(self) -> dict:
        return {
            "position": 0,  # iterations completed
            "phase": "sample",  # "sample": the iteration has not sampled yet; "train": fine-tuning; "choose": done
            "step": 0,  # optimizer steps taken in this iteration
            "offset": 0,  # the official cumulative step count at this iteration's start (candidate cadence)
            "gradient_steps": 0,  # optimizer steps taken in the whole run
            "chosen_step": 0, "chosen_accuracy": 0.0,  # the chosen candidate of this iteration (0 = the SFT model)
            "sft_accuracy": None,  # the SFT model's selection accuracy (every iteration's start)
            "sums": {}, "count": 0,  # step metrics summed since the last candidate
            "seconds": 0.0,  # wall-clock seconds of this iteration's steps
            "checkpoint": 0,  # the number of the checkpoint after this step
        }

    def done(self, progress: dict) -> bool:
        return progress["position"] >= self.ctx.cfg.train.iterations

    def data(self, iteration: int) -> TokenRows:
        """The fine-tuning set of `iteration` (read back from its file after a resume)."""
        if self._data[0] != iteration:
            self._data = (iteration, TokenRows.from_arrays(load_arrays(data_path(self.ctx.cfg.output_dir, iteration)), ""))
        return self._data[1]

    def total_steps(self, data: TokenRows) -> int:
        r = self.ctx.cfg.restem
        return r.epochs * (len(data) // r.batch_size)  # drop_last

    def optimizer(self, data: TokenRows):
        r = self.ctx.cfg.restem
        return update.stage_optimizer(self.ctx.cfg.optim, max(r.epochs * len(data) // r.batch_size, 1))

    def step(self, state: RestemState, progress: dict) -> StepResult:
        progress = dict(progress, checkpoint=progress["checkpoint"] + 1)
        started = time.perf_counter()
        phase = {"sample": self.sample, "train": self.train, "choose": self.choose}[progress["phase"]]
        out = phase(state, progress)
        out.progress["seconds"] += time.perf_counter() - started
        return out

    def sample(self, state: RestemState, p: dict) -> StepResult:
        """Sample the iteration's problems with the policy, keep the correct responses, and start
        fine-tuning the SFT model afresh on them (a fresh optimizer)."""
        cfg, r, it = self.ctx.cfg, self.ctx.cfg.restem, p["position"]
        problems = iteration_problems(self.train_problems, cfg.seed, it, cfg.sampling.problems_per_iteration)
        timer = Timer()
        with timer("sample"):
            ep, rewards, metrics = sample_and_grade(self.ctx, state.policy, problems, jax.random.fold_in(self.rng, it))
        data, kept_metrics = finetuning_set(ep, rewards, r.max_per_problem, r.reward_threshold)
        save_arrays(data_path(cfg.output_dir, it), data.arrays(""))
        self._data = (it, data)
        if p["sft_accuracy"] is None:
            p["sft_accuracy"] = selection_accuracy(self.ctx, self.sft_params, self.select_problems)["select/accuracy"]
        params = jax.tree.map(jnp.copy, self.sft_params)  # the start candidate is the SFT model
        state = RestemState(policy=self.sft_params, params=params,
                            opt_state=update.init_opt_state(self.optimizer(data), params, self.ctx.param_shardings))
        p.update(phase="train", step=0, chosen_step=0, chosen_accuracy=p["sft_accuracy"], sums={}, count=0, seconds=0.0)
        if self.total_steps(data) == 0:
            log(f"RestEM iteration {it}: {len(data)} kept responses < one batch of {r.batch_size}; the SFT model stays")
            p["phase"] = "choose"
        metrics |= kept_metrics | timer.as_metrics()
        metrics |= {"select/step": 0, "select/accuracy": p["sft_accuracy"], "select/chosen": 1.0}
        return StepResult(state, p, metrics, at=it, save=True)

    def train(self, state: RestemState, p: dict) -> StepResult:
        """One optimizer step; after one that reaches a candidate, score it on the selection split."""
        cfg, r, it = self.ctx.cfg, self.ctx.cfg.restem, p["position"]
        data = self.data(it)
        per_epoch, total = len(data) // r.batch_size, self.total_steps(data)
        epoch, within = divmod(p["step"], per_epoch)
        order = np.random.default_rng([cfg.seed, it, epoch, 11]).permutation(len(data))
        tokens, mask = data.batch(order[within * r.batch_size : (within + 1) * r.batch_size], self.pad)  # [b, T]
        tok_mb, mask_mb = to_microbatches(self.ctx.mesh, (tokens, mask), r.micro_batch)  # [M, mb, T]
        params, opt_state, m = update.sft_step(state.params, state.opt_state, tok_mb, mask_mb,
                                               model_cfg=self.ctx.model_cfg, optimizer=self.optimizer(data),
                                               temperature=cfg.sampling.temperature)
        state = state.replace(params=params, opt_state=opt_state)
        m = {k: float(v) for k, v in jax.device_get(m).items()}
        p.update(step=p["step"] + 1, gradient_steps=p["gradient_steps"] + 1, count=p["count"] + 1,
                 sums={k: p["sums"].get(k, 0.0) + v for k, v in m.items()})
        if p["step"] not in candidate_steps(p["offset"], total, r.eval_every_steps):
            return StepResult(state, p, nonfinite=(bool(m["nonfinite"]),))
        select = selection_accuracy(self.ctx, state.params, self.select_problems)
        better = select["select/accuracy"] > p["chosen_accuracy"]
        if better:
            state = state.replace(policy=jax.tree.map(jnp.copy, state.params))
            p.update(chosen_step=p["step"], chosen_accuracy=select["select/accuracy"])
        metrics = {k: v / p["count"] for k, v in p["sums"].items()}
        metrics |= select | {"select/step": p["step"], "select/chosen": float(better)}
        p.update(sums={}, count=0)
        # the official rule never looks past the first candidate that is not better
        if p["step"] >= total or (not better and r.early_stop == "first_decrease"):
            p["phase"] = "choose"
        return StepResult(state, p, metrics, at=it, nonfinite=(bool(m["nonfinite"]),), save=p["phase"] == "train")

    def choose(self, state: RestemState, p: dict) -> StepResult:
        """End the iteration: its chosen candidate is the policy that samples the next one."""
        it, total = p["position"], self.total_steps(self.data(p["position"]))
        log(f"RestEM iteration {it}: chose the candidate at step {p['chosen_step']} of {total} "
            f"(selection accuracy {p['chosen_accuracy']:.4f})")
        metrics = {"restem/chosen_step": p["chosen_step"], "restem/chosen_accuracy": p["chosen_accuracy"],
                   "restem/steps_per_iteration": total, "time/iteration": p["seconds"]}
        p.update(position=it + 1, phase="sample", step=0, offset=p["offset"] + total)
        return StepResult(state, p, metrics, at=it, save=True)

    def evaluate(self, state: RestemState, progress: dict) -> dict:
        """The policy after `position` iterations."""
        rng = jax.random.fold_in(self.rng, 10**6 + progress["position"])
        return evaluate(self.ctx, state.policy, self.eval_problems, rng)

    def policy(self, state: RestemState):
        return state.policy
