"""The program users run: config → checks → the stage that `algo` names → the stage runner.

`STAGES` maps an algo to its stage (SFT, RestEM, DPO+); every other algo is an RL stage,
iterations of `iteration.rl_iteration`. The runner (`runner.StageRunner`) resumes, evaluates,
checkpoints, keeps the time budget, stops on SIGTERM / SIGINT, exports and marks the run done.
One code path for one device, a fake CPU mesh, a GPU or a TPU slice: only the config's mesh changes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from vinejax import multihost, paths
from vinejax.config import validate
from vinejax.train import preemption, run_dir
from vinejax.train.context import RunContext, build_context, rl_steps_per_iteration
from vinejax.train.dpo import DpoStage
from vinejax.train.evaluate import evaluate
from vinejax.train.iteration import init_state, rl_iteration
from vinejax.train.metrics import MetricsWriter
from vinejax.train.restem import RestemStage
from vinejax.train.runner import StageRunner, StepResult, report_finished
from vinejax.train.sft import SFTStage
from vinejax.train.stage import fitting_problems, held_out_problems, iteration_problems, log

SUMMARY_KEYS = (("reward", "rewards/mean"), ("eval", "eval/accuracy"), ("greedy", "eval/greedy_accuracy"),
                ("kl", "kl"), ("clipfrac", "pg_clipfrac"), ("states", "mc/num_states"),
                ("s/it", "time/iteration"), ("sample", "time/sample"), ("mc", "time/mc"),
                ("train", "time/train"), ("host wait", "time/host_wait"), ("eval s", "time/eval"))


class RLStage:
    """`train.iterations` RL iterations from the policy `params`, also the frozen KL reference.
    Its position counts iterations; each iteration is one step."""

    unit, label, summary_keys = "iteration", "it", SUMMARY_KEYS

    def __init__(self, ctx: RunContext, params):
        cfg, t = ctx.cfg, ctx.cfg.train
        self.ctx, self.start = ctx, params
        self.train_problems = fitting_problems(ctx, ctx.task.load_split(cfg.task.train_split))
        self.eval_problems = held_out_problems(ctx) if t.eval_every > 0 else {}  # {split: problems}
        self.ref_params = jax.tree.map(jnp.copy, params)  # frozen reference (the starting policy)
        self.steps_per_iteration = rl_steps_per_iteration(cfg)
        self.rng = jax.random.key(cfg.seed)
        self.eval_every = t.eval_every if t.eval_every > 0 else None
        self.checkpoint_every = max(t.checkpoint_every, 1)

    def initial_state(self):
        state, self.start = init_state(self.ctx, self.start), None  # the steps donate these params
        return state

    def initial_progress(self) -> dict:
        return {"position": 0, "gradient_steps": 0}

    def done(self, progress: dict) -> bool:
        return progress["position"] >= self.ctx.cfg.train.iterations

    def step(self, state, progress: dict) -> StepResult:
        cfg, it = self.ctx.cfg, progress["position"]
        problems = iteration_problems(self.train_problems, cfg.seed, it, cfg.sampling.problems_per_iteration)
        state, metrics, samples = rl_iteration(self.ctx, state, self.ref_params, problems, it,
                                               jax.random.fold_in(self.rng, it))
        if metrics.get("kl", 0.0) > cfg.train.kl_warning:
            log(f"warning: KL to the reference is {metrics['kl']:.3g} nats per sequence at iteration {it} "
                f"(train.kl_warning {cfg.train.kl_warning}): the policy is moving far from its start; check optim.lr")
        done = {"position": it + 1, "gradient_steps": (it + 1) * self.steps_per_iteration}
        return StepResult(state, done, metrics, at=it, samples=samples, nonfinite=state.nonfinite_steps)

    def evaluate(self, state, progress: dict) -> dict:
        """The policy after `position` iterations."""
        rng = jax.random.fold_in(self.rng, 10**6 + progress["position"])
        return evaluate(self.ctx, state.params, self.eval_problems, rng)

    def policy(self, state):
        return state.params


STAGES = {"sft": SFTStage, "restem": RestemStage, "dpo_positive": DpoStage}  # any other algo: RLStage


def stage_class(algo: str):
    """The stage that runs `algo`."""
    return STAGES.get(algo, RLStage)


def run(cfg, config_file: str = "", overrides=()) -> dict:
    """Run the experiment described by a config; returns the last metrics (the final evaluation's).

    Raises `preemption.Preempted` when SIGTERM / SIGINT stopped it at a safe point (checkpoint saved)."""
    validate(cfg)  # before anything starts JAX: multihost.initialize must come first
    paths.use_storage_emulator()
    multihost.initialize(cfg.mesh)
    validate(cfg, jax.device_count())
    with preemption.watch() as signals:
        log(f"vinejax {cfg.algo} | config {config_file or '(in code)'}"
            + (" | overrides " + " ".join(f"{k}={v}" for k, v in overrides) if overrides else ""))
        paths.check_writable(cfg.output_dir, "output_dir", jax.process_index())
        recorded = run_dir.recorded_config(cfg)
        finished = run_dir.read_done(cfg.output_dir) if cfg.resume else None
        if finished is not None and finished.get("config") in (None, run_dir.config_json(cfg)):
            return report_finished(cfg.output_dir, finished)  # the same config: nothing to do
        ctx, params, origin = build_context(cfg)
        run_dir.record_config(cfg, recorded)  # once the task, tokenizer and model have been checked
        log(f"devices: {jax.device_count()} x {jax.devices()[0].platform} in {jax.process_count()} process(es) | "
            f"mesh {dict(ctx.mesh.shape)} | policy{' and KL reference' if cfg.algo != 'sft' else ''} from {origin} | "
            f"output {paths.display(cfg.output_dir)}")
        if cfg.model.init_from and cfg.model.hf_path:
            log(f"note: model.init_from gives the policy and the KL reference ({origin}); model.hf_path "
                f"{cfg.model.hf_path} is not used for weights")
        for note in ctx.notes:
            log("note: " + note)
        writer = MetricsWriter(cfg.output_dir, enabled=jax.process_index() == 0, wandb=cfg.logging,
                               config=run_dir.config_json(cfg))
        try:
            with ctx.mesh_context():
                stage = stage_class(cfg.algo)(ctx, params)
                return StageRunner(ctx, stage, writer, signals).run()
        finally:
            writer.close()
