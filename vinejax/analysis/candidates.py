"""Candidate next steps of a state (the paper's action-ranking analysis): sampled continuations of
the state, cut at the step that follows it (the task's step splitter, or another state rule).

The state is a token prefix that ends at a state of the rule. A continuation gives a candidate
when the rule, run on prefix + continuation, still puts a state at the end of the prefix; the
candidate is the tokens up to the next state. The final step ends where the response text ends (before
a stop string and EOS), so prefix + candidate is a state the policy continues from, as the
official analyzer's text query is.
"""
from __future__ import annotations

import numpy as np

from vinejax.train import encode
from vinejax.train.episodes import Episodes, finish_response, strip_eos, token_offsets
from vinejax.train.states import StateRule, episode_states


def text_end_column(tokenizer, ep: Episodes, row: int) -> int:
    """Column after the last token holding a character of the response text (a trailing stop
    string and EOS excluded)."""
    ids = strip_eos(tokenizer, ep.response_ids(row))
    full = tokenizer.decode(ids, skip_special_tokens=True)
    offsets = token_offsets(tokenizer, ids, full) if ids else []
    return int(ep.prompt_lens[row]) + sum(1 for start, _ in offsets if start < len(ep.texts[row]))


def continuation_episodes(tokenizer, stops, ep: Episodes, positions: np.ndarray, out) -> Episodes:
    """Episodes of N × K rows (state-major): each state's prefix followed by one continuation of
    `out` (a `ContinuationOutput` with one state slot per row), cut at a stop string in the
    continuation (`stops`, a `sampling.StopTable` or None) as the training episodes are."""
    n, k = out.lengths.shape[0], out.lengths.shape[2]
    rows, texts, finish = [], [], []
    for i in range(n):
        prefix = ep.tokens[i, : positions[i]].tolist()
        start = len(prefix) - int(ep.prompt_lens[i])
        for j in range(k):
            cont = out.tokens[i, 0, j, : out.lengths[i, 0, j]].tolist()
            text, ids = finish_response(tokenizer, stops, prefix[ep.prompt_lens[i]:] + cont, search_from=start)
            rows.append(prefix[: ep.prompt_lens[i]] + ids)
            texts.append(text)
            finish.append(out.finish_reason[i, 0, j])
    src = np.repeat(np.arange(n), k)
    width = max(len(r) for r in rows)
    tokens = encode.pad_rows(rows, width, encode.pad_token_id(tokenizer))
    return Episodes(tokens=tokens, logprobs=np.zeros(tokens.shape, np.float32), prompt_lens=ep.prompt_lens[src],
                    total_lens=np.array([len(r) for r in rows], np.int32), finish_reason=np.array(finish, np.int32),
                    texts=texts,
                    problems=[ep.problems[i] for i in src], problem_index=ep.problem_index[src])


def next_step_ends(tokenizer, task, cand: Episodes, positions: np.ndarray, max_new_tokens: int,
                   rule: StateRule = StateRule()) -> np.ndarray:
    """int[M] end column of the step that follows the state in each continuation row of `cand`
    (the state is `cand.tokens[m, :positions[m]]`; steps are the segments between the states of
    `rule`), or -1 when there is none: the splitter rejects the text, the state is not a state
    of it, the step is empty, or no token budget is left after it. The final step ends where the
    text ends."""
    step_starts, num_steps = episode_states(tokenizer, task.split_steps, cand, rule)
    ends = np.full(len(positions), -1, np.int64)
    for m, pos in enumerate(positions):
        starts = step_starts[m, : num_steps[m]].tolist()
        if pos not in starts:
            continue
        i = starts.index(pos)
        end = starts[i + 1] if i + 1 < len(starts) else text_end_column(tokenizer, cand, m)
        if end > pos and max_new_tokens - (end - cand.prompt_lens[m]) >= 1:
            ends[m] = end
    return ends


def distinct_candidates(cand: Episodes, positions: np.ndarray, ends: np.ndarray, per_state: int) -> list[list[int]]:
    """For each state (rows s·K .. s·K+K-1 of `cand`), the rows of its distinct candidate actions
    (by tokens, first occurrence kept)."""
    out = []
    for s in range(len(positions) // per_state):
        seen, rows = set(), []
        for m in range(s * per_state, (s + 1) * per_state):
            if ends[m] < 0:
                continue
            key = tuple(cand.tokens[m, positions[m] : ends[m]].tolist())
            if key not in seen:
                seen.add(key)
                rows.append(m)
        out.append(rows)
    return out
