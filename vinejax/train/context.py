"""What every run needs before its loop, built once and never changed: devices and mesh, task,
tokenizer, model (and critic) config and shardings, optimizers and the loss settings."""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Optional

import jax
import optax
from flax import linen as nn
from jax.sharding import Mesh

from vinejax import multihost, sharding
from vinejax.model import llama
from vinejax.model.config import ModelConfig
from vinejax.rl.losses import PolicyLossConfig
from vinejax.tasks import get_task
from vinejax.train.update import make_optimizer


@dataclasses.dataclass(frozen=True)
class RunContext:
    """The fixed pieces of a run (frozen: nothing here changes during training)."""

    cfg: Any
    mesh: Mesh
    task: Any
    tokenizer: Any
    model_cfg: ModelConfig
    param_shardings: Any
    critic_cfg: Optional[ModelConfig] = None  # PPO: the policy's shape plus a value head
    critic_shardings: Any = None
    optimizer: Optional[optax.GradientTransformation] = None  # RL: the policy's optimizer
    critic_optimizer: Optional[optax.GradientTransformation] = None  # PPO only
    loss_cfg: Optional[PolicyLossConfig] = None  # RL: PPO-clip + KL settings

    def mesh_context(self) -> contextlib.ExitStack:
        """Context under which jitted model code sees the mesh and the logical-axis rules."""
        stack = contextlib.ExitStack()
        stack.enter_context(jax.set_mesh(self.mesh))
        stack.enter_context(nn.logical_axis_rules(sharding.DEFAULT_RULES))
        return stack

    def put_params(self, params):
        return multihost.place(params, self.param_shardings)

    @property
    def context_size(self) -> int:
        """Tokens besides BOS that prompt + response may hold (`model.context_size`, or the model's
        positions − 1): a generation from a prefix of P tokens (BOS included) writes at most
        min(max_new_tokens, context_size − (P − 1)) tokens, as the official `_compute_max_tokens`."""
        c = self.cfg.model.context_size
        return c if c >= 0 else self.model_cfg.max_position_embeddings - 1


def hf_folder_of_run(run_dir: str) -> str:
    """Where a run exports its policy as an HF folder."""
    return os.path.join(run_dir, "hf")


def rl_steps_per_iteration(cfg) -> int:
    """Optimizer steps of one RL iteration: epochs × (episodes / episodes per step)."""
    episodes = cfg.sampling.problems_per_iteration * cfg.sampling.samples_per_problem
    return cfg.ppo.epochs * episodes // cfg.ppo.episodes_per_step


def _task(cfg):
    options = dict(cfg.task.options)
    if cfg.task.data_dir:
        options["data_dir"] = cfg.task.data_dir
    return get_task(cfg.task.name, **options)


def _tokenizer(cfg, task):
    from transformers import AutoTokenizer

    for path in (cfg.model.tokenizer_path, cfg.model.hf_path,
                 hf_folder_of_run(cfg.model.init_from) if cfg.model.init_from else ""):
        if path:
            if not os.path.isdir(path):
                raise FileNotFoundError(f"tokenizer folder not found: {path}")
            return AutoTokenizer.from_pretrained(path)
    if task.name == "arithmetic":
        from vinejax.tasks.arithmetic import ALPHABET
        from vinejax.tasks.char_tokenizer import build_char_tokenizer

        return build_char_tokenizer(ALPHABET)
    raise ValueError(f"task {cfg.task.name!r} has no tokenizer of its own: set model.hf_path or model.tokenizer_path")


def _random_model_config(cfg, tokenizer) -> ModelConfig:
    m = cfg.model
    return ModelConfig(
        vocab_size=len(tokenizer), hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
        num_layers=m.num_layers, num_heads=m.num_heads, num_kv_heads=m.num_kv_heads,
        head_dim=m.hidden_size // m.num_heads, max_position_embeddings=m.max_position_embeddings,
        rms_norm_eps=1e-6, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat,
    )


def _rl_pieces(cfg, model_cfg: ModelConfig, mesh: Mesh) -> dict:
    """Optimizers, loss settings and (PPO) the critic's config and shardings of an RL run."""
    if cfg.algo == "sft":
        return {}
    total_steps = max(cfg.train.iterations * rl_steps_per_iteration(cfg), 1)
    p = cfg.ppo
    pieces = dict(
        optimizer=make_optimizer(cfg.optim, total_steps),
        loss_cfg=PolicyLossConfig(clip_eps=p.clip_eps, kl_coef=p.kl_coef, kl_estimator=p.kl_estimator,
                                  kl_clamp=(0.0, p.kl_clamp),
                                  max_mean_ratio=p.max_mean_ratio if p.max_mean_ratio > 0 else None))
    if cfg.algo == "ppo":
        critic_cfg = model_cfg.replace(value_head=True)
        pieces.update(
            critic_cfg=critic_cfg,
            critic_shardings=sharding.tree_shardings(llama.param_logical_axes(critic_cfg),
                                                     llama.param_shapes(critic_cfg), mesh),
            critic_optimizer=make_optimizer(cfg.optim, total_steps, lr=p.critic_lr))
    return pieces


def build_context(cfg) -> tuple[RunContext, dict, str]:
    """Mesh, task, tokenizer, model config, RL pieces and the initial policy params (sharded).

    Returns (context, params, where the params came from).
    """
    from vinejax.model.hf import load_hf_model

    multihost.initialize(cfg.mesh)  # before the first JAX computation
    mesh = sharding.make_mesh(tuple(cfg.mesh.shape))
    task = _task(cfg)
    tokenizer = _tokenizer(cfg, task)
    source = cfg.model.hf_path or (hf_folder_of_run(cfg.model.init_from) if cfg.model.init_from else "")
    overrides = dict(dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype)
    if source:
        model_cfg, params = load_hf_model(source, mesh=mesh, **overrides)
        model_cfg = model_cfg.replace(remat=cfg.model.remat)
        origin = source
    else:
        model_cfg = _random_model_config(cfg, tokenizer)
        params = llama.init_params(model_cfg, jax.random.key(cfg.seed))
        origin = "random init"
    shardings = sharding.tree_shardings(llama.param_logical_axes(model_cfg), llama.param_shapes(model_cfg), mesh)
    ctx = RunContext(cfg, mesh, task, tokenizer, model_cfg, shardings, **_rl_pieces(cfg, model_cfg, mesh))
    return ctx, ctx.put_params(params), origin
