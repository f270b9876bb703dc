"""Optimizers and the jitted policy / critic update steps (gradient accumulation over micro-batches).

A step takes one optimizer batch shaped `[M, mb, ...]` (M micro-batches of mb episodes, see
`batching.to_microbatches`), sums the exact per-micro-batch gradients with `lax.scan` (the loss
denominators are those of the whole batch, so the sum equals the full-batch gradient), clips,
and applies AdamW. The paper's "skip a batch whose mean ratio > 10" keeps params unchanged.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from vinejax.model import llama
from vinejax.model.config import ModelConfig
from vinejax.rl import losses
from vinejax.rl.advantages import whiten_batch
from vinejax.rl.batch import PairBatch, RolloutBatch
from vinejax.rl.logprobs import token_logprobs_and_entropy
from vinejax.train.scoring import critic_values, sequence_logprobs


def lr_schedule(lr: float, total_steps: int, warmup_frac: float) -> optax.Schedule:
    """Linear warmup over `warmup_frac` of the steps, then linear decay to 0 (paper: 3%)."""
    total = max(int(total_steps), 1)
    warmup = int(round(total * warmup_frac))
    if warmup == 0:
        return optax.linear_schedule(lr, 0.0, total)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), optax.linear_schedule(lr, 0.0, total - warmup)], [warmup]
    )


def make_optimizer(optim_cfg, total_steps: int, lr: float | None = None) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW with the warmup/decay schedule (config section `optim`)."""
    schedule = lr_schedule(optim_cfg.lr if lr is None else lr, total_steps, optim_cfg.warmup_frac)
    return optax.chain(
        optax.clip_by_global_norm(optim_cfg.grad_clip),
        optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                    weight_decay=optim_cfg.weight_decay),
    )


_OPTIMIZERS: dict = {}


def stage_optimizer(optim_cfg, total_steps: int) -> optax.GradientTransformation:
    """`make_optimizer`, one object per distinct (settings, total_steps). The jitted steps take
    the optimizer as a static argument, so a stage that builds its own (RestEM: one per
    iteration; DPO+) reuses compiled code when an equal one was built before in the process."""
    key = (tuple(sorted(optim_cfg.items())), int(total_steps))
    if key not in _OPTIMIZERS:
        _OPTIMIZERS[key] = make_optimizer(optim_cfg, total_steps)
    return _OPTIMIZERS[key]


def _accumulate(loss_fn, params, micro: Any):
    """Sum gradients and (sum, count) metrics of `loss_fn(params, mb)` over micro-batches [M, ...]."""
    first = jax.tree.map(lambda x: x[0], micro)
    metric_shape = jax.eval_shape(lambda p, mb: loss_fn(p, mb)[1], params, first)
    zeros = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def body(carry, mb):
        grads, metrics = carry
        (_, m), g = grad_fn(params, mb)
        return (jax.tree.map(jnp.add, grads, g), losses.add_metrics(metrics, m)), None

    init = (jax.tree.map(jnp.zeros_like, params), zeros(metric_shape))
    (grads, metrics), _ = jax.lax.scan(body, init, micro)
    return grads, metrics


def _apply(optimizer, params, opt_state, grads, skip):
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    keep = lambda old, new: jax.tree.map(lambda o, n: jnp.where(skip, o, n), old, new)
    return keep(params, new_params), keep(opt_state, new_opt_state)


@functools.partial(jax.jit, static_argnames=("model_cfg", "loss_cfg", "optimizer", "temperature", "whiten"),
                   donate_argnums=(0, 1))
def policy_step(params, opt_state, batch: RolloutBatch, *, model_cfg: ModelConfig,
                loss_cfg: losses.PolicyLossConfig, optimizer: optax.GradientTransformation,
                temperature: float, whiten: bool = True):
    """One PPO-clip (+ β·KL) optimizer step on a batch of micro-batches [M, mb, T].

    With `whiten`, token advantages are whitened over the whole optimizer batch (all micro-batches
    together, paper §1.8) before the loss.

    Returns (params, opt_state, metrics) with the reduced loss metrics plus `grad_norm` and
    `skipped` (1.0 when the mean ratio exceeded `loss_cfg.max_mean_ratio`).
    """
    if whiten:
        batch = whiten_batch(batch)
    n_tok = batch.response_mask.sum().astype(jnp.float32)
    n_seq = batch.response_mask.any(axis=-1).sum().astype(jnp.float32)

    def loss_fn(p, mb):
        logits, _ = llama.forward(p, model_cfg, mb.tokens)
        lp, ent = token_logprobs_and_entropy(logits, mb.tokens, temperature)
        return losses.policy_loss(lp, mb, loss_cfg, ent, n_tok, n_seq)

    grads, metrics = _accumulate(loss_fn, params, batch)
    skip = losses.should_skip(metrics, loss_cfg)
    params, opt_state = _apply(optimizer, params, opt_state, grads, skip)
    out = losses.reduce_metrics(metrics)
    out["grad_norm"] = optax.tree.norm(grads)
    out["skipped"] = skip.astype(jnp.float32)
    return params, opt_state, out


@functools.partial(jax.jit, static_argnames=("model_cfg", "optimizer", "clip_range"), donate_argnums=(0, 1))
def critic_step(params, opt_state, batch: RolloutBatch, *, model_cfg: ModelConfig,
                optimizer: optax.GradientTransformation, clip_range: float):
    """One clipped value-loss step of the PPO critic on micro-batches [M, mb, T]."""
    n_tok = batch.response_mask.sum().astype(jnp.float32)

    def loss_fn(p, mb):
        values = critic_values(p, model_cfg, mb.tokens)
        total, _, metrics = losses.clipped_value_loss(values, mb.old_values, mb.returns,
                                                      mb.response_mask, clip_range)
        return total / jnp.maximum(n_tok, 1.0), metrics

    grads, metrics = _accumulate(loss_fn, params, batch)
    params, opt_state = _apply(optimizer, params, opt_state, grads, jnp.zeros((), bool))
    out = losses.reduce_metrics(metrics)
    out["vf_grad_norm"] = optax.tree.norm(grads)
    return params, opt_state, out


@functools.partial(jax.jit, static_argnames=("model_cfg", "optimizer", "per_sequence", "temperature"),
                   donate_argnums=(0, 1))
def sft_step(params, opt_state, tokens: jax.Array, loss_mask: jax.Array, *, model_cfg: ModelConfig,
             optimizer: optax.GradientTransformation, per_sequence: bool = False, temperature: float = 1.0):
    """One MLE step on micro-batches tokens/loss_mask [M, mb, T] (mask marks target tokens).

    The loss is the mean negative log-likelihood over all target tokens of the batch; with
    `per_sequence` (RestEM, official) the mean over sequences of each one's mean token NLL
    (`losses.sequence_mean_nll`). Log-probs are those of softmax(logits / temperature).
    """
    n_tok = loss_mask.sum().astype(jnp.float32)
    n_seq = loss_mask.any(axis=-1).sum().astype(jnp.float32)

    def loss_fn(p, mb):
        toks, mask = mb
        lp = sequence_logprobs(p, model_cfg, toks, temperature)
        if per_sequence:
            total, _, metrics = losses.sequence_mean_nll(lp, mask)
            return total / jnp.maximum(n_seq, 1.0), metrics
        nll = -jnp.where(mask, lp, 0.0).sum()
        return nll / jnp.maximum(n_tok, 1.0), {"nll": (nll, mask.sum().astype(jnp.float32))}

    grads, metrics = _accumulate(loss_fn, params, (tokens, loss_mask))
    params, opt_state = _apply(optimizer, params, opt_state, grads, jnp.zeros((), bool))
    out = losses.reduce_metrics(metrics)
    out["grad_norm"] = optax.tree.norm(grads)
    return params, opt_state, out


@functools.partial(jax.jit, static_argnames=("model_cfg", "optimizer", "temperature", "beta", "lam",
                                             "label_smoothing"), donate_argnums=(0, 1))
def dpo_step(params, opt_state, batch: PairBatch, *, model_cfg: ModelConfig, optimizer: optax.GradientTransformation,
             temperature: float, beta: float, lam: float, label_smoothing: float = 0.0):
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
            s_w, s_l, mb.chosen_ref, mb.rejected_ref, mb.valid(), beta, lam, label_smoothing)
        return total / jnp.maximum(n_pairs, 1.0), metrics

    grads, metrics = _accumulate(loss_fn, params, batch)
    params, opt_state = _apply(optimizer, params, opt_state, grads, jnp.zeros((), bool))
    out = losses.reduce_metrics(metrics)
    out["grad_norm"] = optax.tree.norm(grads)
    return params, opt_state, out
