"""Optimizers and the jitted policy / critic update steps (gradient accumulation over micro-batches).

A step takes one optimizer batch shaped `[M, mb, ...]` (M micro-batches of mb episodes, see
`batching.to_microbatches`), sums the exact per-micro-batch gradients with `lax.scan` (the loss
denominators are those of the whole batch, so the sum equals the full-batch gradient), clips,
and applies AdamW. A step whose loss or gradient is not finite changes nothing.
"""
from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from vinejax import sharding
from vinejax.model import llama, lora
from vinejax.model.config import ModelConfig
from vinejax.rl import losses
from vinejax.rl.advantages import whiten_batch
from vinejax.rl.batch import PairBatch, RolloutBatch
from vinejax.rl.logprobs import token_logprobs_and_entropy
from vinejax.train.scoring import critic_values, sequence_logprobs


def lr_schedule(lr: float, total_steps: int, warmup_frac: float, shape: str = "linear") -> optax.Schedule:
    """Warmup over `warmup_frac` of the steps, then linear decay to 0 (paper: 3%).

    shape "linear": lr·k/W during warmup (optax count k from 0). shape "log": DeepSpeed's
    `WarmupDecayLR` default (the official configs): lr·ln(k + 1)/ln(W) with W >= 2, then
    lr·(T − k)/(T − W). Both reach lr at k = W.
    """
    total = max(int(total_steps), 1)
    warmup = int(math.ceil(total * warmup_frac)) if shape == "log" else int(round(total * warmup_frac))
    if shape == "log":
        w = max(warmup, 2)

        def schedule(count):
            k = jnp.asarray(count, jnp.float32)
            up = jnp.log(k + 1.0) / math.log(w)
            down = jnp.maximum(0.0, (total - k) / max(1, total - w))
            return lr * jnp.where(k < w, up, down)

        return schedule
    if shape != "linear":
        raise ValueError(f"unknown warmup shape {shape!r}; choose 'linear' or 'log'")
    if warmup == 0:
        return optax.linear_schedule(lr, 0.0, total)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), optax.linear_schedule(lr, 0.0, total - warmup)], [warmup]
    )


def make_optimizer(optim_cfg, total_steps: int, lr: float | None = None) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW with the warmup/decay schedule (config section `optim`)."""
    schedule = lr_schedule(optim_cfg.lr if lr is None else lr, total_steps, optim_cfg.warmup_frac,
                           optim_cfg.warmup_shape)
    return optax.chain(
        optax.clip_by_global_norm(optim_cfg.grad_clip),
        optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                    weight_decay=optim_cfg.weight_decay),
    )


def opt_state_shardings(optimizer: optax.GradientTransformation, params, param_shardings):
    """Shardings of `optimizer.init(params)`: every params-shaped part (Adam's mu and nu) laid out
    like the params, the rest (step counts) replicated. params: arrays or `jax.ShapeDtypeStruct`s."""
    shapes = jax.eval_shape(optimizer.init, params)
    mesh = jax.tree.leaves(param_shardings)[0].mesh
    return optax.tree_map_params(optimizer, lambda _, s: s, shapes, param_shardings,
                                 transform_non_params=lambda _: sharding.replicated(mesh))


def init_opt_state(optimizer: optax.GradientTransformation, params, param_shardings):
    """`optimizer.init(params)` sharded like the params (`opt_state_shardings`). A plain jitted
    init would put the zero moments on every device in full: 2x the params per device."""
    out = opt_state_shardings(optimizer, params, param_shardings)
    return jax.jit(optimizer.init, out_shardings=out)(params)


@jax.jit
def all_finite(tree) -> jax.Array:
    """bool scalar: every floating-point leaf of `tree` is finite (one reduction per leaf).

    Jitted: one program for the whole tree. Eager, each leaf was its own cross-process reduction,
    and on CPU (gloo) many of them in flight at once deadlocked a two-process run."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves])) if leaves else jnp.ones((), bool)


_OPTIMIZERS: dict = {}


def stage_optimizer(optim_cfg, total_steps: int, lr: float | None = None) -> optax.GradientTransformation:
    """`make_optimizer`, one object per distinct (settings, total_steps, lr). The jitted steps take
    the optimizer as a static argument, so a run that builds an equal one again in the process (a
    RestEM iteration, a resumed or repeated run) reuses the compiled steps."""
    key = (tuple(sorted(optim_cfg.items())), int(total_steps), lr)
    if key not in _OPTIMIZERS:
        _OPTIMIZERS[key] = make_optimizer(optim_cfg, total_steps, lr=lr)
    return _OPTIMIZERS[key]


class StepInputs(NamedTuple):
    """What a step reads but does not train (each None when unused): `kl_coef`, β of the policy
    loss instead of `loss_cfg.kl_coef` (an f32 scalar: the adaptive KL controller); with LoRA,
    `base`, the frozen params the trained adapters attach to (None: the trained params are the
    whole model), and `dropout_key`, this step's LoRA dropout key (None: no dropout)."""

    kl_coef: Any = None
    base: Any = None
    dropout_key: Any = None


def _accumulate(loss_fn, params, micro: Any, inputs: StepInputs = StepInputs()):
    """Sum the loss, gradients (with respect to `params`) and (sum, count) metrics of
    `loss_fn(model, mb)` over micro-batches [M, ...]. `model` is `params`, or with LoRA
    (`inputs.base`) the base with the adapters `params` attached (and a dropout key per micro-batch)."""
    n = jax.tree.leaves(micro)[0].shape[0]
    keys = None if inputs.dropout_key is None else jax.random.split(inputs.dropout_key, n)  # [M]
    model = lambda p, key: p if inputs.base is None else lora.attach(inputs.base, p, key)
    loss_of = lambda p, xs: loss_fn(model(p, xs[1]), xs[0])
    first = jax.tree.map(lambda x: x[0], (micro, keys))
    metric_shape = jax.eval_shape(lambda p, xs: loss_of(p, xs)[1], params, first)
    zeros = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)
    grad_fn = jax.value_and_grad(loss_of, has_aux=True)

    def body(carry, xs):
        loss, grads, metrics = carry
        (l, m), g = grad_fn(params, xs)
        return (loss + l, jax.tree.map(jnp.add, grads, g), losses.add_metrics(metrics, m)), None

    init = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params), zeros(metric_shape))
    (loss, grads, metrics), _ = jax.lax.scan(body, init, (micro, keys))
    return loss, grads, metrics


def _apply(optimizer, params, opt_state, loss, grads):
    """AdamW step, unless the loss, the gradient or the update is not finite (e.g. Adam with
    eps = 0 divides 0 by 0 where a gradient is 0): then params and optimizer state stay as they
    are. Returns (params, opt_state, metrics `grad_norm`, `nonfinite`)."""
    grad_norm = optax.tree.norm(grads)
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    bad = ~(jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.tree.norm(updates)))
    new_params = optax.apply_updates(params, updates)
    keep = lambda old, new: jax.tree.map(lambda o, n: jnp.where(bad, o, n), old, new)
    return keep(params, new_params), keep(opt_state, new_opt_state), {"grad_norm": grad_norm,
                                                                        "nonfinite": bad.astype(jnp.float32)}


@functools.partial(jax.jit, static_argnames=("model_cfg", "loss_cfg", "optimizer", "temperature"),
                   donate_argnums=(0, 1))
def policy_step(params, opt_state, batch: RolloutBatch, inputs: StepInputs = StepInputs(), *, model_cfg: ModelConfig,
                loss_cfg: losses.PolicyLossConfig, optimizer: optax.GradientTransformation, temperature: float):
    """One PPO-clip (+ β·KL) optimizer step of `params` (the policy, or with LoRA its adapters on
    `inputs.base`) on a batch of micro-batches [M, mb, T]; `inputs.kl_coef`, when given (an f32
    scalar), is β instead of `loss_cfg.kl_coef` (the adaptive KL controller);
    `loss_cfg.aggregation` weighs the tokens of the PPO-clip term (`losses.token_denominators`).

    With `loss_cfg.whiten`, token advantages are whitened over the whole optimizer batch (all
    micro-batches together, paper §1.8) before the loss. A micro-batch whose mean ratio exceeds
    `loss_cfg.max_mean_ratio` contributes no loss (the official rule: its loss is zeroed, the
    optimizer still steps). A non-finite loss or gradient skips the whole step.

    Returns (params, opt_state, metrics) with the reduced loss metrics plus `grad_norm`,
    `skipped` (fraction of micro-batches zeroed by the ratio rule) and `nonfinite` (1.0 when the
    step was skipped).
    """
    if loss_cfg.whiten:
        batch = whiten_batch(batch)
    n_tok = batch.response_mask.sum().astype(jnp.float32)
    n_seq = batch.response_mask.any(axis=-1).sum().astype(jnp.float32)

    def loss_fn(p, mb):
        logits, _ = llama.forward(p, model_cfg, mb.tokens)
        lp, ent = token_logprobs_and_entropy(logits, mb.tokens, temperature)
        denominator = losses.token_denominators(mb.response_mask, (n_tok, n_seq), batch.tokens.shape[0], loss_cfg)
        loss, metrics = losses.policy_loss(lp, mb, loss_cfg, ent, denominator, n_seq, inputs.kl_coef)
        skip = losses.should_skip(metrics, loss_cfg)  # this micro-batch's mean ratio
        metrics["skipped"] = (skip.astype(jnp.float32), jnp.ones((), jnp.float32))
        return jnp.where(skip, 0.0, loss), metrics

    loss, grads, metrics = _accumulate(loss_fn, params, batch, inputs)
    params, opt_state, applied = _apply(optimizer, params, opt_state, loss, grads)
    return params, opt_state, losses.reduce_metrics(metrics) | applied


@functools.partial(jax.jit, static_argnames=("model_cfg", "optimizer", "clip_range", "token_mean"),
                   donate_argnums=(0, 1))
def critic_step(params, opt_state, batch: RolloutBatch, *, model_cfg: ModelConfig,
                optimizer: optax.GradientTransformation, clip_range: float, token_mean: str = "batch"):
    """One clipped value-loss step of the PPO critic on micro-batches [M, mb, T] (a token mean,
    `token_mean` "batch" or "micro_batch" as in `losses.token_denominators`)."""
    n_tok = jnp.maximum(batch.response_mask.sum().astype(jnp.float32), 1.0)
    weighting = losses.PolicyLossConfig(token_mean=token_mean)

    def loss_fn(p, mb):
        values = critic_values(p, model_cfg, mb.tokens)
        total, _, metrics = losses.clipped_value_loss(values, mb.old_values, mb.returns,
                                                      mb.response_mask, clip_range)
        denominator = losses.token_denominators(mb.response_mask, (n_tok, 1), batch.tokens.shape[0], weighting)
        return total / denominator, metrics

    loss, grads, metrics = _accumulate(loss_fn, params, batch)
    params, opt_state, applied = _apply(optimizer, params, opt_state, loss, grads)
    out = losses.reduce_metrics(metrics)
    out["vf_grad_norm"], out["vf_nonfinite"] = applied["grad_norm"], applied["nonfinite"]
    return params, opt_state, out


@functools.partial(jax.jit, static_argnames=("model_cfg", "optimizer", "temperature"), donate_argnums=(0, 1))
def sft_step(params, opt_state, tokens: jax.Array, loss_mask: jax.Array, inputs: StepInputs = StepInputs(), *,
             model_cfg: ModelConfig, optimizer: optax.GradientTransformation, temperature: float = 1.0):
    """One MLE step of `params` (or with LoRA the adapters on `inputs.base`) on micro-batches
    tokens/loss_mask [M, mb, T] (mask marks target tokens).

    The loss is the official `per_instance_non_pad_tokens_then_batch` (SFT and RestEM): each
    example's mean token NLL, then the mean over the examples of the batch; log-probs are those of
    softmax(logits / temperature) (RestEM: the sampling temperature). A non-finite loss or
    gradient skips the step (`nonfinite` 1.0).
    """
    n_seq = loss_mask.any(axis=-1).sum().astype(jnp.float32)

    def loss_fn(p, mb):
        toks, mask = mb
        lp = sequence_logprobs(p, model_cfg, toks, temperature)
        total, _, metrics = losses.sequence_mean_nll(lp, mask)
        return total / jnp.maximum(n_seq, 1.0), metrics

    loss, grads, metrics = _accumulate(loss_fn, params, (tokens, loss_mask), inputs)
    params, opt_state, applied = _apply(optimizer, params, opt_state, loss, grads)
    return params, opt_state, losses.reduce_metrics(metrics) | applied


@functools.partial(jax.jit, static_argnames=("model_cfg", "optimizer", "temperature", "terms"), donate_argnums=(0, 1))
def dpo_step(params, opt_state, batch: PairBatch, *, model_cfg: ModelConfig, optimizer: optax.GradientTransformation,
             temperature: float, terms: losses.DpoTerms):
    """One DPO+ step on micro-batches of preference pairs [M, mb, ...] (`losses.dpo_positive_loss_from_sums`).

    Each micro-batch runs the chosen and the rejected rows through the policy in one forward;
    the loss is the mean over the pairs of the whole optimizer batch. The reference enters only
    through the stored per-response sums `batch.chosen_ref` / `batch.rejected_ref`.
    """
    n_pairs = batch.valid().sum().astype(jnp.float32)

    def loss_fn(p, mb: PairBatch):
        tokens = jnp.concatenate([mb.chosen_tokens, mb.rejected_tokens])  # [2mb, T]
        mask = jnp.concatenate([mb.chosen_mask, mb.rejected_mask])  # [2mb, T]
        lp = sequence_logprobs(p, model_cfg, tokens, temperature)  # [2mb, T]
        s_w, s_l = jnp.split(jnp.where(mask, lp, 0.0).sum(axis=-1), 2)  # [mb] each
        total, _, metrics = losses.dpo_positive_loss_from_sums(
            s_w, s_l, mb.chosen_ref, mb.rejected_ref, mb.valid(), terms)
        return total / jnp.maximum(n_pairs, 1.0), metrics

    loss, grads, metrics = _accumulate(loss_fn, params, batch)
    params, opt_state, applied = _apply(optimizer, params, opt_state, loss, grads)
    return params, opt_state, losses.reduce_metrics(metrics) | applied
