"""Text ↔ token rows: prompts with BOS, SFT examples with a target mask, right-padded buckets."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def bucket(n: int, multiple: int = 16) -> int:
    """Round a length up to a power of two up to 256, then to a multiple of 256 (few compiles)."""
    n = max(int(n), 1)
    if n <= 256:
        p = multiple
        while p < n:
            p *= 2
        return p
    return -(-n // 256) * 256


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of `text` without special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_prompt(tokenizer, text: str) -> list[int]:
    """BOS (when the tokenizer has one) + the prompt's tokens."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + encode_text(tokenizer, text)


def encode_sft(tokenizer, prompt: str, solution: str) -> tuple[list[int], list[bool]]:
    """BOS + prompt + solution + EOS, and a mask that is true on the solution and EOS tokens."""
    p = encode_prompt(tokenizer, prompt)
    s = encode_text(tokenizer, solution) + [tokenizer.eos_token_id]
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


def char_starts_of_tokens(tokenizer, token_ids: Sequence[int], text: str) -> list[int]:
    """Character offset in `text` (= decode(token_ids)) where each token begins.

    Fast path: re-tokenizing `text` gives the same ids, so the tokenizer's offsets apply. Else
    (a sampled tokenization the tokenizer would not produce) decode growing prefixes.
    """
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if list(enc["input_ids"]) == list(token_ids):
        return [start for start, _ in enc["offset_mapping"]]
    starts = []
    for j in range(len(token_ids)):
        starts.append(len(tokenizer.decode(token_ids[:j], skip_special_tokens=True)))
    return starts


def step_token_starts(step_texts: Sequence[str], token_char_starts: Sequence[int]) -> list[int]:
    """Index of the first token of each step; a token belongs to the step holding its first char.

    Steps that would start inside the same token are merged (their starts deduplicated).
    """
    out: list[int] = []
    char = 0
    j = 0
    n = len(token_char_starts)
    for text in step_texts:
        while j < n and token_char_starts[j] < char:
            j += 1
        if j < n and (not out or j > out[-1]):
            out.append(j)
        char += len(text)
    return out or [0]
