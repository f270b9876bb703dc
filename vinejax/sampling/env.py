"""`RolloutEnv`: what generating from a policy needs besides the inputs and the key, in one
frozen object built once per phase (`train.context.RunContext.rollout`) and passed to sampling,
MC continuations, adaptive MC and evaluation."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

from vinejax.model.config import ModelConfig
from vinejax.sampling.core import SamplingConfig
from vinejax.sampling.stops import StopTable, decode_automata


@dataclasses.dataclass(frozen=True)
class RolloutEnv:
    """The fixed pieces of a rollout.

    Model side (`vinejax.sampling`): `params` (the policy, sharded or not), `model_cfg`, `scfg`
    (static sampling settings), `stops` (the task's stop strings as a `StopTable`, or None),
    `context_size` (tokens besides BOS a prompt + response may hold: a generation from a prefix
    of P tokens, BOS included, writes at most min(max_new_tokens, context_size − (P − 1)); −1 =
    the model's positions − 1), `decode_rows` (rows `generate` decodes at once, slots refilled as
    rows finish; 0 = every row of a call), `chunk_rows` (continuation rows decoded at once: the MC
    slots), `schedule` (MC scheduling, `mc.Trajectories.continue_from`) and `refills_per_step`
    (slots a refill loop refills per device per step at most; default its slots // 8);
    `tail_halvings` (times a refill loop may halve its slots once its queue is empty; default
    `refill.RefillPlan`'s).
    Text side (`vinejax.train`): `tokenizer`, `task`, `grade_workers`, `batch_rows` (prompts per
    generate call; 0 = all at once) and `group_rows` (episodes per MC group; 0 = all at once).
    """

    params: Any
    model_cfg: ModelConfig
    scfg: SamplingConfig
    stops: Optional[StopTable] = None
    context_size: int = -1
    decode_rows: int = 0
    chunk_rows: int = 256
    schedule: str = "refill"
    refills_per_step: Optional[int] = None
    tail_halvings: Optional[int] = None
    tokenizer: Any = None
    task: Any = None
    grade_workers: int = 1
    batch_rows: int = 0
    group_rows: int = 0

    def __post_init__(self):
        if self.schedule not in ("refill", "chunks"):
            raise ValueError(f"schedule must be 'refill' or 'chunks', got {self.schedule!r}")

    def replace(self, **changes) -> "RolloutEnv":
        return dataclasses.replace(self, **changes)

    @property
    def context(self) -> int:
        """`context_size`, or the model's positions − 1 when it is −1."""
        return self.context_size if self.context_size >= 0 else self.model_cfg.max_position_embeddings - 1

    def stop_tables(self) -> list:
        """The stop automata a decode runs (`stops.StopTable.next_state` int32[states, V]): the
        sampling config's token-id `stop_sequences`, then `stops`'s."""
        table = None if self.stops is None else np.asarray(self.stops.next_state)
        return decode_automata(self.scfg.stop_sequences, table, self.model_cfg.vocab_size)

    def budgets(self, prefix_lens) -> np.ndarray:
        """`token_budgets` of prefixes (lengths BOS included) under this environment."""
        return token_budgets(prefix_lens, self.scfg.max_new_tokens, self.context)


def token_budgets(prefix_lens, max_new_tokens: int, context_size: int) -> np.ndarray:
    """int32 new tokens a generation from each prefix (lengths BOS included) may write:
    min(max_new_tokens, context_size − (prefix_len − 1)), at least 1 (the official budget: its
    count leaves BOS out)."""
    return np.clip(context_size - (np.asarray(prefix_lens) - 1), 1, max_new_tokens).astype(np.int32)
