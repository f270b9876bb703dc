"""The program users run: config → (SFT | VinePPO / PPO / GRPO / RLOO iterations) with evaluation,
checkpoints (exact resume) and metrics. One code path for 1 device, a fake CPU mesh, a GPU or a
TPU slice: only the config's mesh changes."""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from vinejax import sharding
from vinejax.checkpoint import Checkpointer
from vinejax.config import to_dict, validate
from vinejax.model import llama
from vinejax.model.hf import save_hf_model
from vinejax.rl.losses import PolicyLossConfig
from vinejax.train import update
from vinejax.train.batching import to_microbatches
from vinejax.train.episodes import encode_prompts
from vinejax.train.evaluate import evaluate
from vinejax.train.metrics import MetricsWriter, Timer, progress, summary_line
from vinejax.train.rollout import build_batch
from vinejax.train.setup import build_context, hf_folder_of_run
from vinejax.train.sft import run_sft

SUMMARY_KEYS = (("reward", "rewards/mean"), ("eval", "eval/accuracy"), ("greedy", "eval/greedy_accuracy"),
                ("kl", "kl"), ("clipfrac", "pg_clipfrac"), ("states", "mc/num_states"),
                ("s/it", "time/iteration"), ("sample", "time/sample"), ("mc", "time/mc"),
                ("train", "time/train"), ("eval s", "time/eval"))


def _log(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


def run(cfg) -> dict:
    """Run the experiment described by a validated config; returns the last metrics."""
    validate(cfg, jax.device_count())
    os.makedirs(cfg.output_dir, exist_ok=True)
    with open(os.path.join(cfg.output_dir, "config.json"), "w") as f:
        json.dump(to_dict(cfg), f, indent=1, default=str)
    ctx, params, origin = build_context(cfg)
    _log(f"{cfg.algo}: policy from {origin}; mesh {dict(ctx.mesh.shape)}; output {os.path.abspath(cfg.output_dir)}")
    writer = MetricsWriter(cfg.output_dir, enabled=jax.process_index() == 0)
    if cfg.algo == "sft":
        return run_sft(ctx, params, writer, _log)
    return run_rl(ctx, params, writer)


def iteration_problems(problems: list, seed: int, iteration: int, count: int) -> list:
    """The problems of one iteration: the first `count` of a permutation seeded by (seed, iteration)."""
    order = np.random.default_rng([seed, iteration]).permutation(len(problems))
    return [problems[i] for i in order[:count]]


def _eval_problems(ctx) -> list:
    problems = ctx.task.load_split(ctx.cfg.task.eval_split)
    n = ctx.cfg.task.num_eval_problems
    return problems[:n] if n > 0 else problems


def _fits(ctx, problems):
    """The problems whose prompt fits `task.max_prompt_tokens` (longer ones are dropped)."""
    lens = [len(p) for p in encode_prompts(ctx, problems)]
    return [p for p, n in zip(problems, lens) if n <= ctx.cfg.task.max_prompt_tokens]


def _train_on(ctx, state, batch, iteration: int, optimizers, loss_cfg) -> dict:
    """Epochs × optimizer batches of the policy (and critic) update; returns mean metrics."""
    cfg = ctx.cfg
    n = batch.tokens.shape[0]
    per_step = cfg.ppo.episodes_per_step
    step_metrics = []  # fetched once at the end, so steps dispatch without waiting on the host
    bar = progress(total=cfg.ppo.epochs * -(-n // per_step), desc=f"update it {iteration}")
    for epoch in range(cfg.ppo.epochs):
        order = np.random.default_rng([cfg.seed, iteration, epoch, 7]).permutation(n)
        for start in range(0, n, per_step):
            idx = order[start : start + per_step]
            micro = to_microbatches(ctx, jax.tree.map(lambda x: np.asarray(x)[idx], batch), cfg.ppo.micro_batch)
            with ctx.mesh_context():
                state["params"], state["opt"], m = update.policy_step(
                    state["params"], state["opt"], micro, model_cfg=ctx.model_cfg, loss_cfg=loss_cfg,
                    optimizer=optimizers["policy"], temperature=cfg.sampling.temperature,
                    whiten=cfg.ppo.whiten_advantages)
                if cfg.algo == "ppo":
                    state["critic"], state["critic_opt"], mc = update.critic_step(
                        state["critic"], state["critic_opt"], micro, model_cfg=ctx.critic_cfg,
                        optimizer=optimizers["critic"], clip_range=cfg.ppo.value_clip)
                    m = {**m, **mc}
            step_metrics.append(m)
            bar.update(1)
    bar.close()
    step_metrics = jax.device_get(step_metrics)
    return {k: float(np.mean([m[k] for m in step_metrics])) for k in step_metrics[0]}


def _init_state(ctx, params, optimizers):
    state = {"params": params, "opt": jax.jit(optimizers["policy"].init)(params)}
    if ctx.cfg.algo == "ppo":
        critic = dict(jax.tree.map(jnp.copy, params))
        head = llama.init_value_head(ctx.critic_cfg, jax.random.key(ctx.cfg.seed + 17))
        critic["value_head"] = jax.device_put(head, ctx.critic_shardings["value_head"])
        state["critic"] = critic
        state["critic_opt"] = jax.jit(optimizers["critic"].init)(critic)
    return state


def run_rl(ctx, params, writer) -> dict:
    """VinePPO (or PPO / GRPO / RLOO) iterations from the policy `params`."""
    cfg = ctx.cfg
    ctx.critic_cfg = ctx.model_cfg.replace(value_head=True)
    ctx.critic_shardings = sharding.tree_shardings(
        llama.param_logical_axes(ctx.critic_cfg), llama.param_shapes(ctx.critic_cfg), ctx.mesh)
    train_problems = _fits(ctx, ctx.task.load_split(cfg.task.train_split))
    eval_problems = _fits(ctx, _eval_problems(ctx)) if cfg.train.eval_every > 0 else []
    episodes = cfg.sampling.problems_per_iteration * cfg.sampling.samples_per_problem
    steps_per_iter = cfg.ppo.epochs * episodes // cfg.ppo.episodes_per_step
    total_steps = max(cfg.train.iterations * steps_per_iter, 1)
    optimizers = {"policy": update.make_optimizer(cfg.optim, total_steps)}
    if cfg.algo == "ppo":
        optimizers["critic"] = update.make_optimizer(cfg.optim, total_steps, lr=cfg.ppo.critic_lr)
    ref_params = jax.tree.map(jnp.copy, params)  # frozen reference (the starting policy)
    state = _init_state(ctx, params, optimizers)
    loss_cfg = PolicyLossConfig(clip_eps=cfg.ppo.clip_eps, kl_coef=cfg.ppo.kl_coef,
                                kl_estimator=cfg.ppo.kl_estimator, kl_clamp=(0.0, cfg.ppo.kl_clamp),
                                max_mean_ratio=cfg.ppo.max_mean_ratio if cfg.ppo.max_mean_ratio > 0 else None)
    ckpt = Checkpointer(os.path.join(cfg.output_dir, "checkpoints"), cfg.train.keep_checkpoints)
    start, previously = 0, 0.0
    if cfg.resume and ckpt.latest_step() is not None:
        state, meta = ckpt.restore(ckpt.latest_step(), state)
        start = meta["iteration"]
        previously = meta.get("elapsed", 0.0)
        writer.truncate_after(start - 1)
        _log(f"resumed at iteration {start} from {ckpt.directory}")
    rng = jax.random.key(cfg.seed)
    started = time.time() - previously  # wall-clock of the run, across resumes
    last: dict = {}
    done = start
    for it in range(start, cfg.train.iterations):
        timer = Timer()
        metrics: dict = {}
        evaluated: dict = {}
        if cfg.train.eval_every > 0 and it % cfg.train.eval_every == 0:
            with timer("eval"):
                evaluated = evaluate(ctx, state["params"], eval_problems, jax.random.fold_in(rng, 10**6 + it))
            # logged as of now: the policy after `it` iterations, before this iteration's update
            writer.write(it, evaluated | {"time/elapsed": time.time() - started,
                                          "train/gradient_steps": it * steps_per_iter})
        with timer("iteration"):
            problems = iteration_problems(train_problems, cfg.seed, it, cfg.sampling.problems_per_iteration)
            batch, m, _ = build_batch(ctx, state["params"], ref_params, state.get("critic"), problems,
                                      jax.random.fold_in(rng, it), timer)
            metrics.update(m)
            with timer("train"):
                metrics.update(_train_on(ctx, state, batch, it, optimizers, loss_cfg))
        metrics.update(timer.as_metrics())
        metrics["time/elapsed"] = time.time() - started
        metrics["train/gradient_steps"] = (it + 1) * steps_per_iter
        writer.write(it, metrics)
        _log(summary_line(it, evaluated | metrics, SUMMARY_KEYS))
        last = metrics
        done = it + 1
        over_budget = cfg.train.time_budget_minutes > 0 and time.time() - started > 60 * cfg.train.time_budget_minutes
        if done % max(cfg.train.checkpoint_every, 1) == 0 or done == cfg.train.iterations or over_budget:
            ckpt.save(done, state, {"iteration": done, "elapsed": time.time() - started})
        if over_budget:
            _log(f"time budget of {cfg.train.time_budget_minutes} min reached after iteration {it}")
            break
    if cfg.train.eval_every > 0:
        last = evaluate(ctx, state["params"], eval_problems, jax.random.fold_in(rng, 10**6 + done))
        writer.write(done, last | {"time/elapsed": time.time() - started, "train/gradient_steps": done * steps_per_iter})
        _log(summary_line(done, last, SUMMARY_KEYS))
    ckpt.close()
    if cfg.train.export_hf:
        folder = save_hf_model(state["params"], ctx.model_cfg, hf_folder_of_run(cfg.output_dir), tokenizer=ctx.tokenizer)
        _log(f"policy exported to {folder}")
    _log(f"metrics: {writer.path}; checkpoints: {ckpt.directory}")
    return last
