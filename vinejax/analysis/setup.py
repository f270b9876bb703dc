"""What the value-prediction analysis runs on: a policy (a run dir's exported hf/ folder or an HF
folder), its run config (task, sampling, mesh) and optionally the critic of a PPO run's checkpoint."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

from vinejax.checkpoint import Checkpointer
from vinejax.train.context import RunContext, build_context, hf_folder_of_run
from vinejax.train.iteration import init_state
from vinejax.train.run_policy import read_run_config


@dataclasses.dataclass(frozen=True)
class Setup:
    """The analysed policy, its run context (task, tokenizer, mesh) and optionally a PPO critic."""

    ctx: RunContext
    params: Any
    critic: Any = None
    sources: dict = dataclasses.field(default_factory=dict)


def policy_folder(path: str) -> str:
    """The HF folder of a policy given as a run dir (its exported `hf/`) or as an HF folder."""
    if os.path.isdir(hf_folder_of_run(path)):
        return hf_folder_of_run(path)
    if os.path.isfile(os.path.join(path, "config.json")) and not os.path.isdir(os.path.join(path, "checkpoints")):
        return path
    raise FileNotFoundError(f"policy {path!r} is neither a run dir with an exported hf/ folder nor an HF folder")


def restore_critic(ctx: RunContext, params, run_dir: str, step: Optional[int] = None) -> tuple[Any, int]:
    """The critic params of a PPO run's checkpoint `step` (default: the newest) and that step.

    The checkpoint is restored into `iteration.init_state(ctx, params)`, which gives the shapes,
    dtypes and shardings (ctx must be built from the PPO run's config).
    """
    directory = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoints folder in PPO run {run_dir}")
    if ctx.critic_cfg is None:
        raise ValueError(f"run {run_dir} is not a PPO run (algo {ctx.cfg.algo!r}): it has no critic")
    ckpt = Checkpointer(directory, keep=10**6)  # keep: never prune someone else's checkpoints
    try:
        step = ckpt.latest_step() if step is None else int(step)
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {directory}")
        state, _ = ckpt.restore(step, init_state(ctx, params))
    finally:
        ckpt.close()
    return state.critic, step


def load_setup(policy: str, ppo_run: Optional[str] = None, config: Optional[str] = None,
               critic_step: Optional[int] = None) -> Setup:
    """Policy (run dir or HF folder), run config (the PPO run's, else `config`, else the policy
    run's config.json) and, with `ppo_run`, the critic of its checkpoint `critic_step`."""
    if ppo_run and config:
        raise ValueError("give either ppo_run (its config.json is used) or config, not both")
    folder = policy_folder(policy)
    if not (ppo_run or config) and os.path.abspath(folder) == os.path.abspath(policy):
        raise ValueError(f"policy {policy!r} is an HF folder, which holds no run config: give config or ppo_run")
    config_source = ppo_run or config or policy
    cfg, _ = read_run_config(os.path.dirname(config_source) if os.path.isfile(config_source) else config_source)
    cfg.model.hf_path, cfg.model.init_from, cfg.model.tokenizer_path = folder, "", ""
    ctx, params, _ = build_context(cfg)
    sources = {"policy": os.path.abspath(folder), "config": os.path.abspath(config_source)}
    critic = None
    if ppo_run:
        with ctx.mesh_context():
            critic, step = restore_critic(ctx, params, ppo_run, critic_step)
        sources |= {"ppo_run": os.path.abspath(ppo_run), "critic_step": step}
    return Setup(ctx, params, critic, sources)
