"""From text steps to token indices: which token starts each reasoning step.

A token belongs to the step that contains its first character (tokenizer offsets), as in the
paper's code. The RL code consumes, per response, the token index where each step starts.
"""
from __future__ import annotations

import bisect
from typing import Sequence


def _step_char_starts(steps: Sequence[str]) -> list[int]:
    starts, position = [], 0
    for step in steps:
        if step:  # an empty step owns no character
            starts.append(position)
        position += len(step)
    return starts


def token_step_ids(steps: Sequence[str], offsets: Sequence[tuple[int, int]], char_offset: int = 0) -> list[int]:
    """For each token, the index (among non-empty steps) of the step holding its first character.

    ``offsets`` are (start, end) character spans; ``char_offset`` is subtracted first (use it when
    the tokens come from prompt + response). Tokens with an empty span take the previous token's
    step (the first step if there is none).
    """
    char_starts = _step_char_starts(steps)
    if not char_starts:
        return [0] * len(offsets)
    ids, previous = [], 0
    for start, end in offsets:
        if end <= start:
            ids.append(previous)
            continue
        previous = max(0, bisect.bisect_right(char_starts, start - char_offset) - 1)
        ids.append(previous)
    return ids


def step_token_starts(steps: Sequence[str], offsets: Sequence[tuple[int, int]], char_offset: int = 0) -> list[int]:
    """Token index (relative to the response's first token) where each step starts.

    First entry 0, strictly increasing; steps that start inside the same token as an earlier
    step (so own no token start) are merged into it, i.e. dropped from the list.
    """
    ids = token_step_ids(steps, offsets, char_offset)
    starts = []
    for index, step_id in enumerate(ids):
        if index == 0 or step_id != ids[index - 1]:
            starts.append(index)
    return starts


def tokenize_with_step_starts(tokenizer, response: str, steps: Sequence[str]) -> tuple[list[int], list[int]]:
    """Tokenize ``response`` (no special tokens) and return (token ids, step start token indices).

    ``tokenizer`` is a Hugging Face fast tokenizer; ``"".join(steps)`` must equal ``response``.
    """
    if "".join(steps) != response:
        raise ValueError("the steps do not reproduce the response")
    encoding = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    return list(encoding["input_ids"]), step_token_starts(steps, encoding["offset_mapping"])


def token_char_offsets(tokenizer, token_ids: Sequence[int], window: int = 4) -> list[tuple[int, int]]:
    """Character spans of already-sampled ``token_ids`` in ``tokenizer.decode(token_ids)``.

    Use it when the response tokens come from the sampler (re-tokenizing the decoded text can
    give different tokens). Each token's text is the growth of the decoded string when it is
    appended to its ``window`` predecessors (this keeps SentencePiece's leading-space handling
    right). Tokens holding parts of one UTF-8 character all get that character's span, as
    Hugging Face's ``offset_mapping`` does.
    """
    ids = list(token_ids)
    offsets: list[tuple[int, int]] = []
    position, pending_start = 0, 0  # pending_start: first token not yet given a span
    for index in range(len(ids)):
        start = max(0, pending_start - window)
        before = tokenizer.decode(ids[start:pending_start])
        after = tokenizer.decode(ids[start:index + 1])
        if (after.endswith("\ufffd") or not after.startswith(before)) and index + 1 < len(ids):
            continue  # incomplete character: wait for the token that completes it
        length = max(0, len(after) - len(before))
        offsets.extend([(position, position + min(length, 1))] * (index - pending_start))
        offsets.append((position, position + length))
        position += length
        pending_start = index + 1
    return offsets
