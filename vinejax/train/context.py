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

from vinejax import multihost, paths, sharding
from vinejax.config import STAGES, ConfigError
from vinejax.model import llama
from vinejax.model.config import ModelConfig
from vinejax.rl.losses import PolicyLossConfig, kl_clamp_for
from vinejax.sampling import RolloutEnv
from vinejax.tasks import get_task
from vinejax.train.encode import end_of_turn
from vinejax.train.episodes import sampling_config, stop_table
from vinejax.train.estimators import get_estimator
from vinejax.train.update import stage_optimizer


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
    estimator: Any = None  # RL: where the advantages come from (`train.estimators`)
    notes: tuple = ()  # settings capped the official way, said once at the start
    stops: Any = None  # the task's stop strings as a `sampling.StopTable` (matched on text), or None
    source: str = ""  # the HF folder the policy started from ("" = random init): its kept files go to exports

    def mesh_context(self) -> contextlib.ExitStack:
        """Context under which jitted model code sees the mesh and the logical-axis rules."""
        stack = contextlib.ExitStack()
        stack.enter_context(jax.set_mesh(self.mesh))
        stack.enter_context(nn.logical_axis_rules(sharding.DEFAULT_RULES))
        return stack

    def put_params(self, params):
        return multihost.place(params, self.param_shardings)

    def rollout(self, params, evaluation: bool = False, greedy: bool = False) -> RolloutEnv:
        """The rollout environment of the policy `params`: the `sampling` section's settings and
        the context size, or (`evaluation`) the `eval` section's and the eval context; `greedy`:
        greedy decoding with the eval budget."""
        s, e = self.cfg.sampling, self.cfg.eval
        if greedy:
            scfg = sampling_config(self.tokenizer, 1.0, 1.0, e.max_new_tokens, greedy=True)
        elif evaluation:
            scfg = sampling_config(self.tokenizer, e.temperature, e.top_p, e.max_new_tokens)
        else:
            scfg = sampling_config(self.tokenizer, s.temperature, s.top_p, s.max_new_tokens, top_k=s.top_k)
        return RolloutEnv(params, self.model_cfg, scfg, stops=self.stops,
                          context_size=self.eval_context_size if evaluation or greedy else self.context_size,
                          chunk_rows=self.cfg.vineppo.chunk_rows, tokenizer=self.tokenizer, task=self.task,
                          grade_workers=self.cfg.task.grade_workers, batch_rows=s.batch_size)

    @property
    def context_size(self) -> int:
        """Tokens besides BOS that prompt + response may hold (`model.context_size`, or the model's
        positions − 1): a generation from a prefix of P tokens (BOS included) writes at most
        min(max_new_tokens, context_size − (P − 1)) tokens, as the official `_compute_max_tokens`."""
        c = self.cfg.model.context_size
        return c if c >= 0 else self.model_cfg.max_position_embeddings - 1

    @property
    def eval_context_size(self) -> int:
        """`context_size` at evaluation (`eval.context_size`, or `context_size` when -1): the
        official eval caps a response at min(max_tokens, model_context_size − prompt) too."""
        c = self.cfg.eval.context_size
        return c if c >= 0 else self.context_size


def hf_folder_of_run(run_dir: str) -> str:
    """Where a run exports its policy as an HF folder."""
    return os.path.join(run_dir, "hf")


def rl_steps_per_iteration(cfg) -> int:
    """Optimizer steps of one RL iteration: epochs × (episodes / episodes per step)."""
    episodes = cfg.sampling.problems_per_iteration * cfg.sampling.samples_per_problem
    return cfg.ppo.epochs * episodes // cfg.ppo.episodes_per_step


def task_of(cfg):
    """The task of the `task` section (a built-in, "jsonl" or a plug-in, `tasks.get_task`), its
    prompts through the tokenizer's chat template with `task.chat_template`. A remote `task.data_dir`
    is read through a local copy."""
    data_dir = paths.local_folder(cfg.task.data_dir, "task.data_dir") if cfg.task.data_dir else ""
    task = get_task(cfg.task.name, import_dir=cfg.import_dir, data_dir=data_dir, **cfg.task.options.to_dict())
    return dataclasses.replace(task, chat_template=cfg.task.chat_template) if cfg.task.chat_template else task


def policy_source(cfg) -> str:
    """The HF folder the policy (and the RL's frozen KL reference) starts from ("" = a random
    model): `model.init_from`'s exported policy (a run dir) when given, else `model.hf_path`; a
    missing folder is named with its config key. A folder in a bucket is copied to a local cache."""
    m = cfg.model
    if m.init_from:
        if not paths.isdir(m.init_from, "model.init_from"):
            raise FileNotFoundError(f"run folder not found: {m.init_from} (model.init_from)")
        folder = hf_folder_of_run(m.init_from)
        if not paths.isdir(folder, "model.init_from"):
            raise FileNotFoundError(f"no exported policy in {folder} (model.init_from): run that stage to its end first")
        return paths.local_folder(folder, "model.init_from")
    if m.hf_path and not paths.isdir(m.hf_path, "model.hf_path"):
        raise FileNotFoundError(f"model folder not found: {m.hf_path} (model.hf_path)")
    return paths.local_folder(m.hf_path, "model.hf_path") if m.hf_path else ""


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model",
                   "vocab.txt")


def _tokenizer(cfg, task, source: str):
    m = cfg.model
    if m.tokenizer_path and not paths.isdir(m.tokenizer_path, "model.tokenizer_path"):
        raise FileNotFoundError(f"tokenizer folder not found: {m.tokenizer_path} (model.tokenizer_path)")
    if m.tokenizer_path:
        return load_tokenizer(paths.local_folder(m.tokenizer_path, "model.tokenizer_path"), m.tokenizer_path)
    if source:
        return load_tokenizer(source, f"{m.init_from or m.hf_path} ({'model.init_from' if m.init_from else 'model.hf_path'})")
    if task.tokenizer is not None:  # the task's own (the arithmetic task's character tokenizer)
        return task.tokenizer()
    raise ConfigError(f"config key 'model.tokenizer_path': task {cfg.task.name!r} has no tokenizer of its own; "
                      f"set model.hf_path, model.init_from or model.tokenizer_path")


def load_tokenizer(folder: str, named: str):
    """The tokenizer saved in `folder` (`named`: how the user gave it); one ConfigError line naming
    `model.tokenizer_path` when the folder has no tokenizer files or they do not load."""
    from transformers import AutoTokenizer

    if not any(os.path.isfile(os.path.join(folder, name)) for name in TOKENIZER_FILES):
        raise ConfigError(f"config key 'model.tokenizer_path': no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...) "
                          f"in {named}; set model.tokenizer_path to the folder that has them")
    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception as error:  # a damaged or unsupported tokenizer: the library's reason, on one line
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"config key 'model.tokenizer_path': the tokenizer in {named} does not load "
                          f"({type(error).__name__}: {reason})") from None


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
    """The estimator, optimizers, loss settings and (an estimator with a critic) the critic's config
    and shardings of an RL run."""
    if cfg.algo in STAGES:  # the other stages build their optimizers themselves
        return {}
    estimator = get_estimator(cfg)
    total_steps = max(cfg.train.iterations * rl_steps_per_iteration(cfg), 1)
    p = cfg.ppo
    pieces = dict(estimator=estimator, optimizer=stage_optimizer(cfg.optim, total_steps),
                  loss_cfg=policy_loss_config(cfg, estimator.whiten))
    if estimator.uses_critic:
        critic_cfg = model_cfg.replace(value_head=True)
        pieces.update(
            critic_cfg=critic_cfg,
            critic_shardings=sharding.tree_shardings(llama.param_logical_axes(critic_cfg),
                                                     llama.param_shapes(critic_cfg), mesh),
            critic_optimizer=stage_optimizer(cfg.optim, total_steps, lr=p.critic_lr))
    return pieces


def policy_loss_config(cfg, whiten: bool = True) -> PolicyLossConfig:
    """The policy loss settings of the `ppo` section; `whiten`: the estimator's whitening
    convention, used when `ppo.whiten_advantages` is None."""
    p = cfg.ppo
    return PolicyLossConfig(
        clip_eps=p.clip_eps, clip_eps_high=p.clip_eps_high or None, dual_clip=p.dual_clip or None,
        kl_coef=p.kl_coef, kl_estimator=p.kl_estimator, kl_clamp=kl_clamp_for(p.kl_estimator, p.kl_clamp),
        entropy_coef=p.entropy_coef, max_mean_ratio=p.max_mean_ratio if p.max_mean_ratio > 0 else None,
        aggregation=p.loss_aggregation, token_mean=p.token_mean,
        norm_length=p.loss_norm_length or cfg.sampling.max_new_tokens,
        whiten=whiten if p.whiten_advantages is None else p.whiten_advantages)


def chat_setup(tokenizer, chat_template: bool) -> list[str]:
    """With `task.chat_template`: generation ends at the template's end-of-turn token, which
    becomes the tokenizer's EOS (sampling, stop cuts, SFT targets, the export). Returns the
    notes to say once: that, or that the tokenizer has a chat template the run does not use."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if not chat_template:
        return ["the tokenizer has a chat template; prompts are raw text, as in the paper "
                "(task.chat_template=true to use it)"] if has_template else []
    if not has_template:
        raise ConfigError("config key 'task.chat_template': the tokenizer has no chat template")
    end = end_of_turn(tokenizer)
    if end == tokenizer.eos_token:
        return []
    tokenizer.eos_token = end
    return [f"task.chat_template: responses end at the template's end-of-turn token {end!r} (the tokenizer's EOS "
            f"from here on)"]


def check_lengths(cfg, model_cfg: ModelConfig) -> list[str]:
    """Raise ConfigError for a length setting the model cannot hold; return notes on settings that
    are capped the official way (a response may write at most context − prompt tokens)."""
    positions = model_cfg.max_position_embeddings
    context = cfg.model.context_size if cfg.model.context_size >= 0 else positions - 1
    for key, value in (("model.context_size", context), ("eval.context_size", cfg.eval.context_size)):
        if value > positions - 1:
            raise ConfigError(f"config key {key!r} is {value}, but the model has {positions} positions "
                              f"(at most {positions - 1} besides BOS)")
    if cfg.task.max_prompt_tokens >= context + 1:
        raise ConfigError(f"config key 'task.max_prompt_tokens' is {cfg.task.max_prompt_tokens}: it leaves no room for a "
                          f"response in the context of {context} tokens (+ BOS)")
    if cfg.algo == "sft" and cfg.sft.max_seq_len > positions:
        raise ConfigError(f"config key 'sft.max_seq_len' is {cfg.sft.max_seq_len}, but the model has {positions} positions")
    notes = []
    eval_context = cfg.eval.context_size if cfg.eval.context_size >= 0 else context
    for key, value, limit in (("sampling.max_new_tokens", cfg.sampling.max_new_tokens, context),
                              ("eval.max_new_tokens", cfg.eval.max_new_tokens, eval_context)):
        if value >= limit:
            notes.append(f"{key}={value}: every response is capped at the context of {limit} tokens − prompt "
                         f"(as the official code does)")
        elif cfg.task.max_prompt_tokens - 1 + value > limit:
            notes.append(f"{key}={value}: responses to prompts longer than {limit + 1 - value} tokens are capped "
                         f"at the context of {limit} tokens − prompt (as the official code does)")
    return notes


def build_context(cfg, load_params: bool = True) -> tuple[RunContext, Optional[dict], str]:
    """Mesh, task, tokenizer, model config, RL pieces and the initial policy params (sharded).

    Returns (context, params, where the params came from); params is None when not
    `load_params` (a caller that restores them from a checkpoint). Missing folders and impossible
    lengths raise one-line errors before any weight is loaded.
    """
    from vinejax.model.hf import load_hf_model, read_hf_config
    from vinejax.model.hf_config import config_from_hf

    multihost.initialize(cfg.mesh)  # before the first JAX computation
    if cfg.task.data_dir and not paths.isdir(cfg.task.data_dir, "task.data_dir"):
        raise FileNotFoundError(f"data folder not found: {cfg.task.data_dir} (task.data_dir)")
    source = policy_source(cfg)
    mesh = sharding.make_mesh(tuple(cfg.mesh.shape))
    task = task_of(cfg)
    tokenizer = _tokenizer(cfg, task, source)
    chat_notes = chat_setup(tokenizer, cfg.task.chat_template)
    overrides = dict(dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype)
    if source:
        notes = check_lengths(cfg, config_from_hf(read_hf_config(source)))
        if load_params:
            model_cfg, params = load_hf_model(source, mesh=mesh, **overrides)
        else:
            model_cfg, params = config_from_hf(read_hf_config(source), **overrides), None
        model_cfg = model_cfg.replace(remat=cfg.model.remat, export_dtype=cfg.export.dtype or model_cfg.export_dtype)
        origin = source
    else:
        model_cfg = _random_model_config(cfg, tokenizer).replace(export_dtype=cfg.export.dtype or None)
        notes = check_lengths(cfg, model_cfg)
        params = llama.init_params(model_cfg, jax.random.key(cfg.seed)) if load_params else None
        origin = "random init"
    shardings = sharding.tree_shardings(llama.param_logical_axes(model_cfg), llama.param_shapes(model_cfg), mesh)
    ctx = RunContext(cfg, mesh, task, tokenizer, model_cfg, shardings, notes=tuple(chat_notes + notes),
                     stops=stop_table(tokenizer, task, model_cfg.vocab_size), source=source,
                     **_rl_pieces(cfg, model_cfg, mesh))
    return ctx, None if params is None else ctx.put_params(params), origin


def planning_context(cfg, model_cfg: ModelConfig, mesh: Mesh) -> RunContext:
    """The RunContext of `cfg` with `model_cfg` on `mesh`, without task, tokenizer or weights: what
    `vinejax.tools.plan` lowers the run's jitted programs with."""
    shardings = sharding.tree_shardings(llama.param_logical_axes(model_cfg), llama.param_shapes(model_cfg), mesh)
    return RunContext(cfg, mesh, None, None, model_cfg, shardings, **_rl_pieces(cfg, model_cfg, mesh))
