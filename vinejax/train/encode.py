"""Text ↔ token rows: prompts with BOS (or through the tokenizer's chat template), SFT examples
with a target mask, right-padded buckets."""
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


def chat_ids(tokenizer, messages: list, generation_prompt: bool) -> list[int]:
    """Token ids of `messages` through the tokenizer's chat template (its own BOS and markers)."""
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True)
    return list(out if isinstance(out, list) else out["input_ids"])


def end_of_turn(tokenizer) -> str:
    """The token that ends an assistant turn in the tokenizer's chat template (<|im_end|>,
    <|eot_id|>, <end_of_turn>, </s>): the first special token after an assistant message."""
    marker = "vinejax-end-of-turn-probe"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "1"}, {"role": "assistant", "content": marker}],
                                         tokenize=False)
    tail = text[text.rindex(marker) + len(marker):]
    special = set(tokenizer.all_special_tokens)
    for token in tokenizer.convert_ids_to_tokens(encode_text(tokenizer, tail)):
        if token in special:
            return token
    return tokenizer.eos_token


def task_prompt(tokenizer, task, problem_text: str) -> list[int]:
    """The prompt of a problem as token ids: BOS + `task.prompt(problem_text)`, or with
    `task.chat_template` one user message holding it and the generation prompt."""
    text = task.prompt(problem_text)
    if getattr(task, "chat_template", False):
        return chat_ids(tokenizer, [{"role": "user", "content": text}], generation_prompt=True)
    return encode_prompt(tokenizer, text)


def task_sft(tokenizer, task, problem_text: str, target: str) -> tuple[list[int], list[bool]]:
    """An SFT example (`encode_sft`), or with `task.chat_template` the conversation of the user
    message and the assistant's `target`, the mask true on the assistant turn up to and including
    its end-of-turn token (`end_of_turn`; the tokenizer's EOS in chat runs)."""
    if not getattr(task, "chat_template", False):
        return encode_sft(tokenizer, task.prompt(problem_text), target)
    user = [{"role": "user", "content": task.prompt(problem_text)}]
    prompt = chat_ids(tokenizer, user, generation_prompt=True)
    full = chat_ids(tokenizer, user + [{"role": "assistant", "content": target}], generation_prompt=False)
    shared = next((i for i, (a, b) in enumerate(zip(prompt, full)) if a != b), min(len(prompt), len(full)))
    turn = full[shared:]
    if tokenizer.eos_token_id in turn:  # what the template writes after the end of the turn is not trained
        turn = turn[: turn.index(tokenizer.eos_token_id) + 1]
    return full[:shared] + turn, [False] * shared + [True] * len(turn)


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
