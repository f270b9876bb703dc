"""Random ragged rollout batches (plain numpy) for tests of the RL numerics.

``random_rollouts`` follows the array conventions of ``vinejax.rl.batch.RolloutBatch`` and puts
garbage (large finite values) into every padded / masked slot, so that tests catch any leak of
padding into results. Rows 0, 1, 2 are edge cases: a one-step response, an empty response and a
prompt-only row of length 1.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vinejax.rl.batch import RolloutBatch


def random_rollouts(seed: int, B: int = 8, T: int = 24, S: int = 6, K: int = 4,
                    V: int = 11) -> dict[str, np.ndarray]:
    """Returns a dict of numpy arrays:

    tokens int32[B, T], response_mask bool[B, T], prompt_len int32[B], resp_len int32[B],
    step_starts int32[B, S], num_steps int32[B], mc_rewards f32[B, S, K], mc_mask bool[B, S, K],
    rewards f32[B], values f32[B, S] (random in [0, 1], garbage on padded slots),
    logprobs / old_logprobs / ref_logprobs f32[B, T] (negative, garbage off mask),
    token_values f32[B, T], logits f32[B, T, V].
    """
    rng = np.random.default_rng(seed)
    assert B >= 3 and T >= 4
    prompt_len = rng.integers(1, T // 3 + 1, size=B)
    resp_len = np.array([rng.integers(0, T - p + 1) for p in prompt_len])
    prompt_len[0], resp_len[0] = 2, 3                 # one-step response (forced below)
    resp_len[1] = 0                                   # empty response
    prompt_len[2], resp_len[2] = 1, 0                 # prompt-only row
    num_steps = np.zeros(B, np.int32)
    step_starts = rng.integers(-5, 3 * T, size=(B, S)).astype(np.int32)   # garbage padding
    response_mask = np.zeros((B, T), bool)
    for b in range(B):
        p, n = prompt_len[b], resp_len[b]
        response_mask[b, p:p + n] = True
        if n == 0:
            continue
        L = 1 if b == 0 else int(rng.integers(1, min(n, S) + 1))
        offs = np.sort(rng.choice(np.arange(1, n), size=L - 1, replace=False)) if L > 1 else []
        num_steps[b] = L
        step_starts[b, :L] = p + np.concatenate([[0], offs]).astype(np.int32)
    tokens = np.where(np.arange(T)[None] < (prompt_len + resp_len)[:, None],
                      rng.integers(1, V, size=(B, T)), 0).astype(np.int32)
    mc_mask = np.zeros((B, S, K), bool)
    for b in range(B):
        for i in range(num_steps[b]):
            k = rng.integers(1, K + 1)
            mc_mask[b, i, rng.choice(K, size=k, replace=False)] = True
    mc_rewards = np.where(mc_mask, rng.integers(0, 2, size=(B, S, K)), 37.0).astype(np.float32)
    rewards = rng.integers(0, 2, size=B).astype(np.float32)
    exists = np.arange(S)[None] < num_steps[:, None]
    values = np.where(exists, rng.uniform(size=(B, S)), 55.0).astype(np.float32)

    def lp():
        return np.where(response_mask, -rng.exponential(1.0, size=(B, T)), 99.0).astype(np.float32)

    old = lp()
    new = np.where(response_mask, old + rng.normal(0, 0.3, size=(B, T)), -99.0).astype(np.float32)
    return dict(
        tokens=tokens, response_mask=response_mask, prompt_len=prompt_len.astype(np.int32),
        resp_len=resp_len.astype(np.int32), step_starts=step_starts, num_steps=num_steps,
        mc_rewards=mc_rewards, mc_mask=mc_mask, rewards=rewards, values=values,
        logprobs=new, old_logprobs=old, ref_logprobs=lp(),
        token_values=np.where(response_mask, rng.uniform(size=(B, T)), 77.0).astype(np.float32),
        logits=rng.normal(0, 2.0, size=(B, T, V)).astype(np.float32),
    )


def microbatches(batch: RolloutBatch, n: int) -> RolloutBatch:
    """Reshape every leaf ``[B, ...] -> [n, B // n, ...]`` (what the train step scans over)."""
    if batch.batch_size % n:
        raise ValueError(f"batch {batch.batch_size} not divisible into {n} micro-batches")
    return jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), batch)


def pad_batch(batch: RolloutBatch, rows: int, cols: int, steps: int | None = None) -> RolloutBatch:
    """Pad to ``[rows, cols]`` (and ``steps`` step slots) with masked entries.

    New tokens/values are 0, masks false, ``num_steps`` 0, so no loss or metric changes. Used to
    bucket ragged batches to a few fixed shapes (one compilation per shape).
    """
    B, T = batch.tokens.shape
    if rows < B or cols < T:
        raise ValueError("pad_batch only grows the batch")

    def pad(x):
        if x.ndim == 1:
            return jnp.pad(x, (0, rows - B))
        widths = [(0, rows - B), (0, cols - T)] + [(0, 0)] * (x.ndim - 2)
        return jnp.pad(x, widths)

    out = jax.tree.map(pad, batch.replace(step_starts=None, num_steps=None))
    if batch.step_starts is not None:
        S = batch.step_starts.shape[1]
        extra = 0 if steps is None else steps - S
        out = out.replace(step_starts=jnp.pad(batch.step_starts, ((0, rows - B), (0, extra))),
                          num_steps=jnp.pad(batch.num_steps, (0, rows - B)))
    return out
