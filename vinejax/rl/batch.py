"""``RolloutBatch``: the pytree contract between sampling/advantage code and the train step.

All per-token arrays are ``[B, T]`` and aligned with ``tokens`` (see ``vinejax.rl.logprobs``):
entry t refers to token t given ``tokens[:, :t]``; column 0 is always masked.
"""
from __future__ import annotations

from typing import Optional

import flax.struct
import jax


@flax.struct.dataclass
class RolloutBatch:
    """One optimizer batch (or micro-batch) of episodes. Optional fields may be None.

    tokens:        int32[B, T] prompt then response, contiguous from column 0, right-padded.
    response_mask: bool[B, T] response tokens (incl. EOS when finished); false on prompt/padding.
    old_logprobs:  f32[B, T] log-probs under the sampling policy (logits / temperature).
    ref_logprobs:  f32[B, T] log-probs under the frozen reference (SFT) policy.
    advantages:    f32[B, T] token advantages (whitened or not), 0 off the mask.
    rewards:       f32[B] episode reward R (0/1).
    step_starts:   int32[B, S] column where step i begins; slots >= num_steps are padding.
    num_steps:     int32[B] number of steps L (0 for an empty response).
    returns:       f32[B, T] critic targets (PPO baseline).
    old_values:    f32[B, T] critic values at sampling time (PPO baseline), aligned like
                   log-probs: entry t is V of the prefix tokens[:, :t].
    """

    tokens: jax.Array
    response_mask: jax.Array
    old_logprobs: jax.Array
    ref_logprobs: jax.Array
    advantages: jax.Array
    rewards: jax.Array
    step_starts: Optional[jax.Array] = None
    num_steps: Optional[jax.Array] = None
    returns: Optional[jax.Array] = None
    old_values: Optional[jax.Array] = None

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    def num_tokens(self) -> jax.Array:
        """Number of response tokens (the PPO loss denominator)."""
        return self.response_mask.sum()

    def num_sequences(self) -> jax.Array:
        """Number of rows with at least one response token (the KL loss denominator)."""
        return self.response_mask.any(axis=1).sum()


@flax.struct.dataclass
class PairBatch:
    """One optimizer batch (or micro-batch) of DPO preference pairs: row b of each side is pair b.

    chosen_tokens, rejected_tokens: int32[B, T] prompt then response rows (one width T for both).
    chosen_mask, rejected_mask:     bool[B, T] response tokens (incl. EOS when finished).
    chosen_ref, rejected_ref:       f32[B] sums of the frozen reference's log-probs over each
                                    response (stored once, before training).
    """

    chosen_tokens: jax.Array
    rejected_tokens: jax.Array
    chosen_mask: jax.Array
    rejected_mask: jax.Array
    chosen_ref: jax.Array
    rejected_ref: jax.Array

    def valid(self) -> jax.Array:
        """bool[B]: pairs whose two responses both have a token (the loss denominator)."""
        return self.chosen_mask.any(axis=-1) & self.rejected_mask.any(axis=-1)
