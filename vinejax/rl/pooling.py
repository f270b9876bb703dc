"""Pooled MC values: a continuation that passes through a later state of its episode counts there too.

A continuation from state s_i of episode b whose first Δ = starts[b, j] − starts[b, i] tokens are
the episode's own tokens up to state s_j (j > i) *is*, from s_j on, a continuation from s_j: the
policy samples each token from the tokens before it, nothing else. So its reward is one more draw
of V(s_j), free (`vineppo.pool_continuations`; SPO's tree shares prefixes the same way):
    V̂(s_j) = (Σ_k r_{j,k} + Σ_{i<j, k passes through s_j} r_{i,k}) / (K_j + passes).

Why V̂(s_j) stays exactly unbiased. Whether continuation (i, k) passes through s_j is decided by
its tokens before s_j's boundary; given that it does, what it writes after is a draw from the
policy at s_j, independent of every other continuation. So given which continuations pass (all
counts), the pooled rewards are i.i.d. with mean V(s_j) and E[V̂ | counts] = V(s_j). It needs a
pooled reward to be graded exactly as one of s_j's own would be:
  * the same budget: s_j's own may write b_j tokens (`env.budgets`); a continuation of s_i must be
    able to write Δ + b_j, more than its own b_i where max_new_tokens binds. The caller decodes s_i
    with `extended_budgets` (the most any later estimated state needs) and grades each use with
    its own budget (`pooled_values`): a reward counts for s_i when the continuation ended within
    b_i tokens, for s_j when it ended within Δ + b_j. s_i's own rewards are those of a decode at
    b_i: every token is drawn with the key of its position, whatever the budget;
  * the same stops: stop strings match in the continuation's own text. One that could begin before
    s_j's boundary and end after it (a step ending in "\\n" and the stop "\\n\\n\\nProblem:") would
    stop the continuation of s_i where one of s_j would go on. `clean_boundaries` keeps only the
    (i, j) whose stop automata are back at their start state at s_j's boundary: a function of the
    episode's tokens, not of any draw, so it selects nothing.
The baseline stays one: V̂(s_i) holds s_i's own draws and draws from earlier states, none of which
depends on the episode's step i. A_i = V̂(s_{i+1}) − V̂(s_i) shares the draws of s_i that pass
through s_{i+1} between its two terms (common random numbers: a smaller variance).
`tests/test_rl_pooling.py` enumerates every outcome of small trees.

Shapes: B episodes, S state slots, K continuations per state, N continuation tokens, T episode tokens.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from vinejax.rl.values import MCValues
from vinejax.sampling.core import FINISH_EOS, FINISH_STOP


class Continuations(NamedTuple):
    """The decoded continuations of every state (a `sampling.ContinuationOutput`'s host arrays)."""

    tokens: np.ndarray   # int[B, S, K, N]
    lengths: np.ndarray  # int[B, S, K] tokens written
    finish: np.ndarray   # int[B, S, K] finish reason (`sampling.core.FINISH_*`)


def decode_width(max_new_tokens: int, context: int) -> int:
    """Tokens a pooling continuation may write at most where the episodes were sampled with
    max_new_tokens: its state's budget plus the rest of the response (at most max_new_tokens),
    within the context (one decode width per run; the caller widens it for longer episodes)."""
    return max(max_new_tokens, min(2 * max_new_tokens, context))


def later_offsets(starts: np.ndarray, estimated: np.ndarray) -> np.ndarray:
    """int64[B, S, S] Δ[b, i, j] = starts[b, j] − starts[b, i] for estimated j > i, −1 elsewhere."""
    starts = np.asarray(starts, np.int64)
    delta = starts[:, None, :] - starts[:, :, None]                       # [B, S(i), S(j)]
    s = starts.shape[1]
    later = np.asarray(estimated, bool)[:, :, None] & np.asarray(estimated, bool)[:, None, :]
    later &= np.arange(s)[None, None, :] > np.arange(s)[None, :, None]
    return np.where(later, delta, -1)


def extended_budgets(starts: np.ndarray, budgets: np.ndarray, estimated: np.ndarray) -> np.ndarray:
    """int32[B, S]: tokens a continuation of state i must be able to write so that it could pass
    through any later estimated state j of its episode with j's own budget left:
    max(budgets[b, i], max_j Δ[b, i, j] + budgets[b, j])."""
    delta = later_offsets(starts, estimated)
    reach = np.where(delta >= 0, delta + np.asarray(budgets, np.int64)[:, None, :], 0).max(-1, initial=0)
    return np.maximum(np.asarray(budgets, np.int64), reach).astype(np.int32)


def clean_boundaries(tables: Sequence[np.ndarray], tokens: np.ndarray, starts: np.ndarray,
                     estimated: np.ndarray) -> np.ndarray:
    """bool[B, S, S]: j > i estimated, and every stop automaton (`stops.StopTable.next_state`
    int[states, V], state 0 = start, −1 = stopped) run over tokens[b, starts_i:starts_j] from its
    start ends at its start state (no stop string half matched across s_j's boundary). With no
    tables, every later estimated pair."""
    delta = later_offsets(starts, estimated)
    clean = delta >= 0
    tokens, starts = np.asarray(tokens), np.asarray(starts, np.int64)
    t = tokens.shape[1]
    bi = np.arange(tokens.shape[0])[:, None]
    for table in tables:
        table = np.asarray(table)
        state = np.zeros(starts.shape, np.int64)                          # [B, S] automaton run from s_i
        at_start = np.zeros(clean.shape, bool)
        at_start[delta == 0] = True
        for d in range(int(delta.max(initial=0))):
            col = np.minimum(starts + d, t - 1)
            nxt = table[np.maximum(state, 0), tokens[bi, col]]
            state = np.where(state < 0, -1, nxt)                          # −1 stays: a stop completed
            at_start |= (delta == d + 1) & (state == 0)[:, :, None]
        clean &= at_start
    return clean


def pass_through(cont: Continuations, tokens: np.ndarray, starts: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """bool[B, S, K, S]: continuation k of state i writes the episode's tokens up to the boundary of
    state j (`clean[b, i, j]`: a later estimated state with a clean boundary)."""
    toks = np.asarray(cont.tokens)
    b, s, k, n = toks.shape
    tokens, starts = np.asarray(tokens), np.asarray(starts, np.int64)
    cols = starts[:, :, None] + np.arange(n)[None, None, :]                # [B, S, N]
    own = np.where(cols < tokens.shape[1], tokens[np.arange(b)[:, None, None], np.minimum(cols, tokens.shape[1] - 1)], -1)
    differ = (toks != own[:, :, None, :]) | (np.arange(n) >= np.asarray(cont.lengths)[..., None])  # [B, S, K, N]
    matched = np.where(differ.any(-1), differ.argmax(-1), n)              # [B, S, K] leading tokens equal
    delta = starts[:, None, :] - starts[:, :, None]                       # [B, S(i), S(j)]
    return clean[:, :, None, :] & (delta[:, :, None, :] <= matched[..., None])


def pooled_values(graded: np.ndarray, cont: Continuations, through: np.ndarray, starts: np.ndarray,
                  budgets: np.ndarray, drawn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(f32[B, S] V̂, int64[B, S] draws) of every estimated state (one with a draw in `drawn`
    bool[B, S, K]: its own continuations) from the grades f32[B, S, K] of its own and of the
    drawn continuations of earlier states that pass through it (`through`), each counted when it
    ended (eos or stop) within the budget of the state it counts for (`budgets` int[B, S], the
    official ones). `graded` may carry trailing axes (f32[B, S, K, ...]): each is pooled alike."""
    drawn = np.asarray(drawn, bool)
    est = drawn.any(-1)                                                   # [B, S]
    lengths = np.asarray(cont.lengths, np.int64)
    ended = np.isin(cont.finish, (FINISH_EOS, FINISH_STOP))
    budgets = np.asarray(budgets, np.int64)
    graded = np.asarray(graded)
    extra = (1,) * (graded.ndim - 3)                                      # graded's trailing axes
    own = np.where((drawn & ended & (lengths <= budgets[..., None])).reshape(drawn.shape + extra), graded, 0.0)
    delta = later_offsets(starts, est)                                    # [B, S(i), S(j)]
    after = lengths[..., None] - delta[:, :, None, :]                     # [B, S, K, S] written past s_j
    passing = through & drawn[..., None] & ended[..., None] & (after <= budgets[:, None, None, :])
    pooled = np.einsum("bikj,bik...->bj...", passing.astype(graded.dtype), graded)  # [B, S(j), ...]
    draws = drawn.sum(-1) + (through & drawn[..., None]).sum((1, 2))     # [B, S]
    value = (own.sum(2) + pooled) / np.maximum(draws, 1).reshape(draws.shape + extra)
    keep = est.reshape(est.shape + extra)
    return np.where(keep, value, 0.0).astype(np.float32), np.where(est, draws, 0).astype(np.int64)


def pooled_mc_values(graded: np.ndarray, cont: Continuations, through: np.ndarray, starts: np.ndarray,
                     budgets: np.ndarray, drawn: np.ndarray) -> MCValues:
    """`pooled_values` as `rl.values.MCValues` [B, S]: value, standard error (from the pooled
    draws' second moment, pooled in the same pass) and count."""
    moments, draws = pooled_values(np.stack([graded, np.square(graded)], -1), cont, through, starts, budgets, drawn)
    value, square = moments[..., 0], moments[..., 1].astype(np.float64)
    n = draws.astype(np.float64)
    var = np.maximum(square - value.astype(np.float64) ** 2, 0.0) * n / np.maximum(n - 1, 1)
    stderr = np.where(n >= 2, np.sqrt(var / np.maximum(n, 1)), 0.0)
    return MCValues(value, stderr.astype(np.float32), draws.astype(np.int32))
