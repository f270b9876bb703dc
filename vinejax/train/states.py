"""Where an episode's MC states are: the registry behind `vineppo.states`.

    "steps"     the task's reasoning-step boundaries (`episodes.episode_steps`, the paper)
    "tokens"    every `vineppo.state_interval` response tokens from the first (SPO's chain; the
                splitter is not run, so no episode is dropped)
    "pkg.module:fn"  a user's rule: fn(`StateInputs`) -> (starts int[B, S], counts int[B]); the
                module is imported from PYTHONPATH or the config file's folder (`import_dir`)

A rule returns, per episode b, the absolute token columns where its states' steps start:
starts[b, 0] = the prompt's length (state 0 is the prompt), strictly increasing, before the
response's end, counts[b] of them (0 drops the episode, as the step splitter's rejections do).
The advantage of state i spreads over the tokens from starts[b, i] to the next state (the
response's end). `vineppo.max_states` > 0 then caps any rule's states (`cap_states`). A user's
rule is checked against this contract on every call (`check_states`).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np

from vinejax.errors import ConfigError
from vinejax.plugins import load_object
from vinejax.train import encode
from vinejax.train.episodes import Episodes, episode_steps

KEY = "vineppo.states"


class StateInputs(NamedTuple):
    """What a state rule sees: the episodes, the tokenizer, the task's `split_steps(text) ->
    list[str]` and `vineppo.state_interval`."""

    episodes: Episodes
    tokenizer: Any
    split_steps: Callable
    interval: int


def steps(x: StateInputs) -> tuple[np.ndarray, np.ndarray]:
    """The task's reasoning-step boundaries (`episodes.episode_steps`)."""
    return episode_steps(x.tokenizer, x.split_steps, x.episodes)


def tokens(x: StateInputs) -> tuple[np.ndarray, np.ndarray]:
    """A state every `x.interval` response tokens (`token_states`)."""
    return token_states(x.episodes.prompt_lens, x.episodes.total_lens, x.interval)


BUILTIN = {"steps": "vinejax.train.states:steps", "tokens": "vinejax.train.states:tokens"}


def state_function(name: str, import_dir: str = "") -> Callable:
    """The rule `name` gives (a name in BUILTIN or "pkg.module:fn"); a one-line `ConfigError`
    naming `vineppo.states` when it cannot be loaded."""
    return load_object(BUILTIN.get(name, name), KEY, import_dir=import_dir, known=", ".join(BUILTIN))


class StateRule(NamedTuple):
    """Where the MC states of a response are (`vineppo.states`, `state_interval`, `max_states`;
    `import_dir` finds a user's rule)."""

    kind: str = "steps"
    interval: int = 8
    max_states: int = 0
    import_dir: str = ""

    @classmethod
    def of(cls, cfg) -> "StateRule":
        v = cfg.vineppo
        return cls(v.states, int(v.state_interval), int(v.max_states), cfg.import_dir)


def token_states(prompt_lens, total_lens, interval: int) -> tuple[np.ndarray, np.ndarray]:
    """(int32[B, S] starts, int32[B] counts): a state every `interval` response tokens, at columns
    prompt_len + j·interval < total_len (one state, the prompt, for an empty response)."""
    plen, tlen = np.asarray(prompt_lens, np.int64), np.asarray(total_lens, np.int64)
    counts = np.maximum(-(-(tlen - plen) // interval), 1)  # ceil(response tokens / interval)
    j = np.arange(int(counts.max(initial=1)))[None]
    starts = np.where(j < counts[:, None], plen[:, None] + j * interval, 0)
    return starts.astype(np.int32), counts.astype(np.int32)


def cap_states(starts, counts, prompt_lens, total_lens, max_states: int) -> tuple[np.ndarray, np.ndarray]:
    """At most `max_states` of each row's states: the response's tokens [prompt_len, total_len)
    are cut into `max_states` equal spans and the first state in each span is kept (state 0, the
    prompt, always). Returns (int32[B, S'] starts, int32[B] counts) in the layout of `episode_steps`."""
    starts, counts = np.asarray(starts, np.int64), np.asarray(counts, np.int64)
    plen, tlen = np.asarray(prompt_lens, np.int64), np.asarray(total_lens, np.int64)
    length = np.maximum(tlen - plen, 1)[:, None]
    span = (starts - plen[:, None]) * max_states // length  # [B, S] the span each state falls in
    valid = np.arange(starts.shape[1])[None] < counts[:, None]
    first = np.concatenate([np.ones((len(span), 1), bool), span[:, 1:] != span[:, :-1]], 1)
    keep = valid & first
    kept = [row[k] for row, k in zip(starts, keep)]
    out = encode.pad_rows(kept, max(int(keep.sum(1).max(initial=0)), 1), 0)
    return np.asarray(out, np.int32), keep.sum(1).astype(np.int32)


def check_states(name: str, result, ep: Episodes) -> tuple[np.ndarray, np.ndarray]:
    """A rule's (starts, counts) as int32 arrays, or a one-line `ConfigError` naming
    `vineppo.states` and the first episode that breaks the module's contract."""
    where = f"config key {KEY!r} is {name!r}"
    try:
        starts, counts = (np.asarray(a) for a in result)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: it must return (starts int[B, S], counts int[B])") from None
    b = len(ep.prompt_lens)
    if starts.ndim != 2 or starts.shape[0] != b or counts.shape != (b,) or not (
            np.issubdtype(starts.dtype, np.integer) and np.issubdtype(counts.dtype, np.integer)):
        raise ConfigError(f"{where}: it returned starts {starts.dtype}{list(starts.shape)} and counts "
                          f"{counts.dtype}{list(counts.shape)}; want integer [{b}, S] and [{b}]")
    for r in range(b):
        row, n = starts[r], int(counts[r])
        if not 0 <= n <= starts.shape[1]:
            raise ConfigError(f"{where}: episode {r} has {n} states in a row of {starts.shape[1]}")
        s = row[:n]
        if n and (s[0] != ep.prompt_lens[r] or np.any(np.diff(s) <= 0) or s[-1] >= ep.total_lens[r]):
            raise ConfigError(f"{where}: episode {r}'s states {s.tolist()} must start at the prompt's end "
                              f"{int(ep.prompt_lens[r])}, increase, and stay before the response's end "
                              f"{int(ep.total_lens[r])}")
    return starts.astype(np.int32), counts.astype(np.int32)


def episode_states(tokenizer, split_steps, ep: Episodes, rule: StateRule = StateRule()) -> tuple[np.ndarray, np.ndarray]:
    """Absolute token column where each state's step starts, int32[B, S], and state counts
    int32[B], by `rule` (`StateRule`); 0 states for an episode the rule drops (e.g. "steps" where
    the splitter rejects the response)."""
    result = state_function(rule.kind, rule.import_dir)(StateInputs(ep, tokenizer, split_steps, rule.interval))
    if rule.kind in BUILTIN:
        starts, counts = result
    else:
        starts, counts = check_states(rule.kind, result, ep)
    if rule.max_states > 0:
        starts, counts = cap_states(starts, counts, ep.prompt_lens, ep.total_lens, rule.max_states)
    return starts, counts
