"""The program users run: config → SFT, RL iterations (`iteration.rl_iteration`) or the RL-free
baselines (`restem`, `dpo`), with evaluation, checkpoints (exact resume), a time budget, export
and logging. One code path for one device, a fake CPU mesh, a GPU or a TPU slice: only the
config's mesh changes."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from vinejax import multihost
from vinejax.checkpoint import Checkpointer
from vinejax.config import to_dict, validate
from vinejax.model.hf import save_hf_model
from vinejax.train.context import RunContext, build_context, hf_folder_of_run, rl_steps_per_iteration
from vinejax.train.dpo import run_dpo
from vinejax.train.evaluate import evaluate
from vinejax.train.iteration import init_state, rl_iteration
from vinejax.train.metrics import MetricsWriter, RunClock, summary_line
from vinejax.train.restem import run_restem
from vinejax.train.run_dir import record_config
from vinejax.train.sft import run_sft
from vinejax.train.stage import (
    RunError,
    fitting_problems,
    held_out_problems,
    iteration_problems,
    log,
    resume,
    save_checked,
)
from vinejax.train.update import all_finite

SUMMARY_KEYS = (("reward", "rewards/mean"), ("eval", "eval/accuracy"), ("greedy", "eval/greedy_accuracy"),
                ("kl", "kl"), ("clipfrac", "pg_clipfrac"), ("states", "mc/num_states"),
                ("s/it", "time/iteration"), ("sample", "time/sample"), ("mc", "time/mc"),
                ("train", "time/train"), ("host wait", "time/host_wait"), ("eval s", "time/eval"))


def run(cfg, config_file: str = "", overrides=()) -> dict:
    """Run the experiment described by a config; returns the last metrics."""
    validate(cfg)  # before anything starts JAX: multihost.initialize must come first
    multihost.initialize(cfg.mesh)
    validate(cfg, jax.device_count())
    os.makedirs(cfg.output_dir, exist_ok=True)
    record_config(cfg)
    multihost.barrier("run directory ready")  # process 0 may have moved an earlier run aside
    ctx, params, origin = build_context(cfg)
    log(f"vinejax {cfg.algo} | config {config_file or '(in code)'}"
        + (" | overrides " + " ".join(f"{k}={v}" for k, v in overrides) if overrides else ""))
    log(f"devices: {jax.device_count()} x {jax.devices()[0].platform} in {jax.process_count()} process(es) | "
        f"mesh {dict(ctx.mesh.shape)} | policy{' and KL reference' if cfg.algo != 'sft' else ''} from {origin} | "
        f"output {os.path.abspath(cfg.output_dir)}")
    if cfg.model.init_from and cfg.model.hf_path:
        log(f"note: model.init_from gives the policy and the KL reference ({origin}); model.hf_path "
            f"{cfg.model.hf_path} is not used for weights")
    for note in ctx.notes:
        log("note: " + note)
    writer = MetricsWriter(cfg.output_dir, enabled=jax.process_index() == 0, wandb=cfg.logging, config=to_dict(cfg))
    try:
        with ctx.mesh_context():
            if cfg.algo == "sft":
                return run_sft(ctx, params, writer, log)
            if cfg.algo == "restem":
                return run_restem(ctx, params, writer)
            if cfg.algo == "dpo_positive":
                return run_dpo(ctx, params, writer)
            return run_rl(ctx, params, writer)
    finally:
        writer.close()


def run_rl(ctx: RunContext, params, writer: MetricsWriter) -> dict:
    """RL iterations from the policy `params`: eval cadence, checkpoints, time budget, export."""
    cfg, t = ctx.cfg, ctx.cfg.train
    train_problems = fitting_problems(ctx, ctx.task.load_split(cfg.task.train_split))
    eval_problems = held_out_problems(ctx) if t.eval_every > 0 else {}  # {split: problems}
    steps_per_iter = rl_steps_per_iteration(cfg)
    ref_params = jax.tree.map(jnp.copy, params)  # frozen reference (the starting policy)
    ckpt = Checkpointer(os.path.join(cfg.output_dir, "checkpoints"), t.keep_checkpoints)
    state, meta = resume(ckpt, init_state(ctx, params), cfg.resume, writer)
    done = meta.get("iteration", 0)
    rng = jax.random.key(cfg.seed)
    run_clock = RunClock(meta)  # wall-clock and CPU seconds of the run, across resumes
    clock = lambda it: run_clock.as_metrics() | {"train/gradient_steps": it * steps_per_iter}
    last: dict = {}
    for it in range(done, t.iterations):
        evaluated = {}
        if t.eval_every > 0 and it % t.eval_every == 0:  # the policy after `it` iterations
            evaluated = evaluate(ctx, state.params, eval_problems, jax.random.fold_in(rng, 10**6 + it))
            writer.write(it, evaluated | clock(it))
        problems = iteration_problems(train_problems, cfg.seed, it, cfg.sampling.problems_per_iteration)
        try:
            state, last, samples = rl_iteration(ctx, state, ref_params, problems, it, jax.random.fold_in(rng, it))
        except RunError as error:
            raise RunError(f"{error}; the last good checkpoint is {ckpt.latest_step()} in {ckpt.directory}") from None
        done = it + 1
        writer.write(it, last | clock(done))
        writer.write_samples(it, samples)
        log(summary_line(it, evaluated | last, SUMMARY_KEYS))
        if last.get("kl", 0.0) > t.kl_warning:
            log(f"warning: KL to the reference is {last['kl']:.3g} nats per sequence at iteration {it} "
                f"(train.kl_warning {t.kl_warning}): the policy is moving far from its start; check optim.lr")
        over_budget = multihost.main_decides(  # process 0's clock decides for every process
            t.time_budget_minutes > 0 and run_clock.elapsed() > 60 * t.time_budget_minutes)
        if done % max(t.checkpoint_every, 1) == 0 or done == t.iterations or over_budget:
            save_checked(ckpt, done, state, {"iteration": done} | run_clock.as_meta())
        if over_budget:
            log(f"time budget of {t.time_budget_minutes} min reached after iteration {it}")
            break
    if t.eval_every > 0:
        last = evaluate(ctx, state.params, eval_problems, jax.random.fold_in(rng, 10**6 + done))
        writer.write(done, last | clock(done))
        log(summary_line(done, last, SUMMARY_KEYS))
    ckpt.close()
    if t.export_hf:
        if not bool(all_finite(state.params)):
            raise RunError(f"non-finite parameters after iteration {done}: not exported")
        folder = save_hf_model(state.params, ctx.model_cfg, hf_folder_of_run(cfg.output_dir), tokenizer=ctx.tokenizer,
                               source=ctx.source)
        log(f"policy exported to {folder}")
    log(f"metrics: {writer.path}; checkpoints: {ckpt.directory}")
    return last
