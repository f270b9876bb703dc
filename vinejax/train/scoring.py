"""Scoring token rows with a model: sequence log-probs (policy, reference) and critic values.

The pure functions are what the update steps differentiate; the jitted scorers and `score_rows`
are what the iteration calls on host arrays, a fixed number of rows per call.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from vinejax.model import llama
from vinejax.model.config import ModelConfig
from vinejax.multihost import to_host
from vinejax.rl.logprobs import token_logprobs
from vinejax.train.batching import to_device_batch


def sequence_logprobs(params, cfg: ModelConfig, tokens: jax.Array, temperature: float) -> jax.Array:
    """f32[B, T] log-probs of right-padded rows under softmax(logits / T) (column 0 = 0)."""
    logits, _ = llama.forward(params, cfg, tokens)
    return token_logprobs(logits, tokens, temperature)


def critic_values(params, cfg: ModelConfig, tokens: jax.Array) -> jax.Array:
    """f32[B, T] critic values aligned like log-probs: values[:, t] = V(tokens[:, :t]) (col 0 = 0)."""
    _, hidden = llama.forward(params, cfg, tokens)
    v = llama.value_head(params, hidden)  # [B, T]: value after reading token t
    return jnp.pad(v[:, :-1], ((0, 0), (1, 0)))


@functools.partial(jax.jit, static_argnames=("model_cfg", "temperature"))
def logprob_scorer(params, tokens, *, model_cfg, temperature):
    """Jitted `sequence_logprobs`."""
    return sequence_logprobs(params, model_cfg, tokens, temperature)


@functools.partial(jax.jit, static_argnames=("model_cfg",))
def value_scorer(params, tokens, *, model_cfg):
    """Jitted `critic_values`."""
    return critic_values(params, model_cfg, tokens)


def score_rows(mesh, scorer, params, tokens: np.ndarray, rows_per_call: int) -> np.ndarray:
    """Apply a jitted scorer `scorer(params, tokens)` over row chunks sharded on `mesh`; f32[B, T] on
    every host."""
    out = []
    for start in range(0, tokens.shape[0], rows_per_call):
        chunk = tokens[start : start + rows_per_call]
        n = chunk.shape[0]
        padded = np.pad(chunk, ((0, rows_per_call - n), (0, 0)))
        out.append(to_host(scorer(params, to_device_batch(mesh, padded)))[:n])
    return np.concatenate(out)
