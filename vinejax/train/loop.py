"""The program users run: config → SFT, or RL iterations (`iteration.rl_iteration`) with
evaluation, checkpoints (exact resume), a time budget, export and logging. One code path for one
device, a fake CPU mesh, a GPU or a TPU slice: only the config's mesh changes."""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp

from vinejax import multihost
from vinejax.checkpoint import Checkpointer
from vinejax.config import to_dict, validate
from vinejax.model.hf import save_hf_model
from vinejax.train.context import RunContext, build_context, hf_folder_of_run, rl_steps_per_iteration
from vinejax.train.evaluate import evaluate
from vinejax.train.iteration import init_state, rl_iteration
from vinejax.train.metrics import MetricsWriter, summary_line
from vinejax.train.sft import run_sft
from vinejax.train.stage import fitting_problems, held_out_problems, iteration_problems, log, resume

SUMMARY_KEYS = (("reward", "rewards/mean"), ("eval", "eval/accuracy"), ("greedy", "eval/greedy_accuracy"),
                ("kl", "kl"), ("clipfrac", "pg_clipfrac"), ("states", "mc/num_states"),
                ("s/it", "time/iteration"), ("sample", "time/sample"), ("mc", "time/mc"),
                ("train", "time/train"), ("eval s", "time/eval"))


def run(cfg) -> dict:
    """Run the experiment described by a config; returns the last metrics."""
    validate(cfg)  # before anything starts JAX: multihost.initialize must come first
    multihost.initialize(cfg.mesh)
    validate(cfg, jax.device_count())
    os.makedirs(cfg.output_dir, exist_ok=True)
    if multihost.is_main_process():
        with open(os.path.join(cfg.output_dir, "config.json"), "w") as f:
            json.dump(to_dict(cfg), f, indent=1, default=str)
    ctx, params, origin = build_context(cfg)
    log(f"{cfg.algo}: policy from {origin}; mesh {dict(ctx.mesh.shape)}; output {os.path.abspath(cfg.output_dir)}")
    writer = MetricsWriter(cfg.output_dir, enabled=jax.process_index() == 0)
    with ctx.mesh_context():
        if cfg.algo == "sft":
            return run_sft(ctx, params, writer, log)
        return run_rl(ctx, params, writer)


def run_rl(ctx: RunContext, params, writer: MetricsWriter) -> dict:
    """RL iterations from the policy `params`: eval cadence, checkpoints, time budget, export."""
    cfg, t = ctx.cfg, ctx.cfg.train
    train_problems = fitting_problems(ctx, ctx.task.load_split(cfg.task.train_split))
    eval_problems = fitting_problems(ctx, held_out_problems(ctx)) if t.eval_every > 0 else []
    steps_per_iter = rl_steps_per_iteration(cfg)
    ref_params = jax.tree.map(jnp.copy, params)  # frozen reference (the starting policy)
    ckpt = Checkpointer(os.path.join(cfg.output_dir, "checkpoints"), t.keep_checkpoints)
    state, meta = resume(ckpt, init_state(ctx, params), cfg.resume, writer)
    done = meta.get("iteration", 0)
    rng = jax.random.key(cfg.seed)
    started = time.time() - meta.get("elapsed", 0.0)  # wall-clock of the run, across resumes
    clock = lambda it: {"time/elapsed": time.time() - started, "train/gradient_steps": it * steps_per_iter}
    last: dict = {}
    for it in range(done, t.iterations):
        evaluated = {}
        if t.eval_every > 0 and it % t.eval_every == 0:  # the policy after `it` iterations
            evaluated = evaluate(ctx, state.params, eval_problems, jax.random.fold_in(rng, 10**6 + it))
            writer.write(it, evaluated | clock(it))
        problems = iteration_problems(train_problems, cfg.seed, it, cfg.sampling.problems_per_iteration)
        state, last = rl_iteration(ctx, state, ref_params, problems, it, jax.random.fold_in(rng, it))
        done = it + 1
        writer.write(it, last | clock(done))
        log(summary_line(it, evaluated | last, SUMMARY_KEYS))
        over_budget = multihost.main_decides(  # process 0's clock decides for every process
            t.time_budget_minutes > 0 and time.time() - started > 60 * t.time_budget_minutes)
        if done % max(t.checkpoint_every, 1) == 0 or done == t.iterations or over_budget:
            ckpt.save(done, state, {"iteration": done, "elapsed": time.time() - started})
        if over_budget:
            log(f"time budget of {t.time_budget_minutes} min reached after iteration {it}")
            break
    if t.eval_every > 0:
        last = evaluate(ctx, state.params, eval_problems, jax.random.fold_in(rng, 10**6 + done))
        writer.write(done, last | clock(done))
        log(summary_line(done, last, SUMMARY_KEYS))
    ckpt.close()
    if t.export_hf:
        folder = save_hf_model(state.params, ctx.model_cfg, hf_folder_of_run(cfg.output_dir), tokenizer=ctx.tokenizer)
        log(f"policy exported to {folder}")
    log(f"metrics: {writer.path}; checkpoints: {ckpt.directory}")
    return last
