"""Text ↔ token rows: prompts with BOS, SFT examples with a target mask, right-padded buckets."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def length_bucket(n: int, multiple: int = 16, coarse_above: int = 256) -> int:
    """Round a length up to a multiple of `multiple` (of 128 above `coarse_above`): few compiles,
    little padding."""
    n = max(int(n), 1)
    step = multiple if n <= coarse_above else 128
    return -(-n // step) * step


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of `text` without special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_prompt(tokenizer, text: str) -> list[int]:
    """BOS (when the tokenizer has one) + the prompt's tokens."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + encode_text(tokenizer, text)


def encode_sft(tokenizer, prompt: str, target: str) -> tuple[list[int], list[bool]]:
    """BOS + prompt + target + EOS, and a mask that is true on the target and EOS tokens.

    As the official SFT data: prompt and target are tokenized together (no spurious word-start
    token before the target with SentencePiece tokenizers); the target is the tokens from the
    first one that starts at or after the end of the prompt text.
    """
    enc = tokenizer(prompt + target, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    cut = next((i for i, (start, _) in enumerate(offsets) if start >= len(prompt)), len(ids))
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    p, s = bos + ids[:cut], ids[cut:] + [tokenizer.eos_token_id]
    return p + s, [False] * len(p) + [True] * len(s)


def pad_rows(rows: Sequence[Sequence], length: int, value=0, dtype=np.int32) -> np.ndarray:
    """Right-pad (or cut) each row to `length`: array [len(rows), length]."""
    out = np.full((len(rows), length), value, dtype=dtype)
    for i, r in enumerate(rows):
        r = list(r)[:length]
        out[i, : len(r)] = r
    return out


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, else its EOS id (padding is always masked)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
