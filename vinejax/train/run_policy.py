"""A run folder's policy, for evaluation: its recorded config.json, its checkpoints, and the
policy params of any checkpoint restored onto the config's mesh (the optimizer state, the critic
and the rest of the training state are never read)."""
from __future__ import annotations

import json
import os

import jax

from vinejax import paths
from vinejax.checkpoint import Checkpointer, CheckpointError
from vinejax.config import ConfigError, from_dict
from vinejax.model import llama
from vinejax.train.context import RunContext, build_context
from vinejax.train.run_dir import checkpoint_dir


def is_run_dir(folder: str) -> bool:
    """Whether `folder` holds a vinejax run (a config.json recorded by `run_dir.record_config`,
    not an HF model's config.json)."""
    path = os.path.join(folder, "config.json")
    try:
        raw = json.loads(paths.read_text(path))
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and "algo" in raw and "model" in raw


def read_run_config(run_dir: str):
    """The run's recorded config (`base_config()` + its config.json) and the keys skipped as
    unknown to this version."""
    if not paths.isdir(run_dir):
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    path = os.path.join(run_dir, "config.json")
    if not paths.exists(path):
        raise FileNotFoundError(f"no config.json in {run_dir}: not a vinejax run folder")
    try:
        raw = json.loads(paths.read_text(path))
    except ValueError as error:
        raise ConfigError(f"{path} is not valid JSON: {error}") from None
    return from_dict(raw)


def checkpoint_steps(run_dir: str) -> list[int]:
    """Steps of the run's complete checkpoints, oldest first (RL: iterations done; SFT: optimizer
    steps); [] when it has none."""
    folder = checkpoint_dir(run_dir)
    if not paths.isdir(folder):
        return []
    ckpt = Checkpointer(folder)
    try:
        return ckpt.all_steps()
    finally:
        ckpt.close()


def restore_policy(ctx: RunContext, run_dir: str, step: int) -> tuple[dict, dict]:
    """(policy params, checkpoint meta) of checkpoint `step` of the run whose config built `ctx`,
    placed on `ctx`'s mesh. An unreadable checkpoint raises CheckpointError naming it."""
    folder = checkpoint_dir(run_dir)
    if step not in checkpoint_steps(run_dir):
        raise CheckpointError(f"no checkpoint {step} in {folder}")
    target = jax.tree.map(lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                          llama.param_shapes(ctx.model_cfg), ctx.param_shardings)
    key = 0 if ctx.cfg.algo == "sft" else "params"  # SFT saves (params, opt_state), RL a TrainState
    ckpt = Checkpointer(folder)
    try:
        return ckpt.restore_part(step, key, target)
    except Exception as error:  # truncated files, a changed shape, ...: name the checkpoint
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise CheckpointError(f"checkpoint {step} in {folder} could not be read: {type(error).__name__}"
                              + (f": {reason}" if reason else "")) from error
    finally:
        ckpt.close()


def load_run_policy(run_dir: str, step: int | None = None) -> tuple[RunContext, dict, dict]:
    """(context, policy params, checkpoint meta) of checkpoint `step` (default: the newest) of
    the run in `run_dir`, built from its recorded config."""
    cfg, _ = read_run_config(run_dir)
    steps = checkpoint_steps(run_dir)
    if not steps:
        raise CheckpointError(f"no checkpoint in {checkpoint_dir(run_dir)}")
    ctx, _, _ = build_context(cfg, load_params=False)
    params, meta = restore_policy(ctx, run_dir, steps[-1] if step is None else step)
    return ctx, params, meta
