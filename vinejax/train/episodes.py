"""Episodes of one batch of problems: sampled token rows, texts, finish flags; their rewards and
their reasoning steps as token columns.

Host-side orchestration around the jitted `vinejax.sampling.generate`, shared by the RL iteration
and evaluation.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, NamedTuple, Optional

import jax
import numpy as np

from vinejax import sampling
from vinejax.multihost import split_rows, to_host
from vinejax.tasks.base import StepSplitError
from vinejax.tasks.steps import step_token_starts, token_char_offsets
from vinejax.train import encode
from vinejax.train.metrics import progress


@dataclasses.dataclass(frozen=True)
class Episodes:
    """B = problems × samples rows (sample-major within a problem)."""

    tokens: np.ndarray  # int32[B, T] prompt + response, right-padded
    logprobs: np.ndarray  # f32[B, T] sampler log-probs aligned with tokens (0 off the response)
    prompt_lens: np.ndarray  # int32[B]
    total_lens: np.ndarray  # int32[B]
    finish_reason: np.ndarray  # int32[B] codes of sampling.FINISH_REASONS
    texts: list  # response texts (special tokens and a trailing stop string removed)
    problems: list  # the Problem of each row
    problem_index: np.ndarray  # int32[B] index into the problem list

    @property
    def finished(self) -> np.ndarray:
        return self.finish_reason != sampling.FINISH_LENGTH

    @property
    def response_mask(self) -> np.ndarray:
        col = np.arange(self.tokens.shape[1])[None]
        return (col >= self.prompt_lens[:, None]) & (col < self.total_lens[:, None])

    def select(self, rows) -> "Episodes":
        """The episodes `rows` (int[M], repeats allowed) as an Episodes of M rows."""
        rows = np.asarray(rows, np.int64)
        fields = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            fields[f.name] = value[rows] if isinstance(value, np.ndarray) else [value[r] for r in rows]
        return Episodes(**fields)

    def response_ids(self, row: int) -> list:
        return self.tokens[row, self.prompt_lens[row] : self.total_lens[row]].tolist()


def sampling_config(tokenizer, temperature: float, top_p: float, max_new_tokens: int,
                    greedy: bool = False, top_k: int = 0) -> sampling.SamplingConfig:
    """The tokenizer's EOS/pad as a static SamplingConfig (stop strings travel as a
    `sampling.StopTable`, `stop_table`)."""
    return sampling.SamplingConfig(
        max_new_tokens=max_new_tokens, temperature=temperature if not greedy else 1.0, top_p=top_p,
        top_k=top_k, greedy=greedy, eos_ids=(tokenizer.eos_token_id,), pad_id=encode.pad_token_id(tokenizer),
    )


def stop_table(tokenizer, task, vocab_size: int):
    """The task's stop strings matched on the generated text (any tokenizer), or None."""
    strings = [s for s in task.stop_strings if s]
    return sampling.stop_automaton(tokenizer, strings, vocab_size) if strings else None


def strip_eos(tokenizer, ids: list) -> list:
    """`ids` without a final EOS token."""
    return ids[:-1] if ids and ids[-1] == tokenizer.eos_token_id else ids


def finish_response(tokenizer, stops, ids: list, search_from: int = 0) -> tuple[str, list]:
    """(text, token ids) of a sampled response as the official code trains and grades it: a
    response that ends in a stop string loses it (and anything after it) and gets EOS; the text
    is decoded without special tokens. `search_from`: where the response's own tokens start
    (after an MC state's prefix)."""
    if stops is not None:
        cut = sampling.cut_at_stop(tokenizer, stops, strip_eos(tokenizer, ids), search_from=search_from)
        if cut.stopped:
            return cut.text, cut.token_ids
    return tokenizer.decode(strip_eos(tokenizer, ids), skip_special_tokens=True), list(ids)


def encode_prompts(tokenizer, task, problems) -> list[list[int]]:
    """The prompt tokens of each problem (`encode.task_prompt`: BOS + prompt, or the chat template's)."""
    return [encode.task_prompt(tokenizer, task, p.problem) for p in problems]


class EpisodeGroup(NamedTuple):
    """Episodes handed over as soon as they are sampled and split into steps (MC that starts
    early): rows int[M] (their rows in the iteration), episodes, starts int32[M, S] (absolute
    column where each state's step starts, `states.episode_states`) and num_steps int32[M]."""

    rows: np.ndarray
    episodes: "Episodes"
    starts: np.ndarray
    num_steps: np.ndarray


class EpisodeStream:
    """An iteration's episodes as its generate calls produce them (`sample_episode_batches`).

    `calls()` runs the calls one at a time; each call's episodes are graded on `host`'s thread at
    once, and (with `states_of`) carved into groups of `group_rows` episodes (a group may span
    calls; 0 = one group per call) whose MC states `states_of(group)` (`states.episode_states`) are
    found on the host thread too. It yields, per
    call, the groups that call completed, each as a function that waits for its `EpisodeGroup`;
    `rest()` gives the last, incomplete one. `episodes()`, `rewards()` and `steps()` give every
    episode's after the calls.
    """

    def __init__(self, env: sampling.RolloutEnv, problems, num_samples: int, rng: jax.Array, host,
                 group_rows: int = 0, states_of: Optional[Callable] = None):
        self.env, self.problems, self.num_samples, self.rng, self.host = env, problems, num_samples, rng, host
        self.group_rows, self.states_of = group_rows, states_of
        self.parts, self.graded, self.splits = [], [], []
        self.buffer: list = []  # (Episodes, rows) sampled, not yet in a group

    def calls(self) -> Iterator[list]:
        env, host, offset = self.env, self.host, 0
        for ep in sample_episode_batches(env, self.problems, self.num_samples, self.rng):
            self.parts.append(ep)
            self.graded.append(host.track(grade_episodes(env.task, ep, env.grade_workers, pool=host.pool)))
            self.buffer.append((ep, offset + np.arange(len(ep.texts))))
            offset += len(ep.texts)
            yield self._groups(final=self.group_rows <= 0)

    def rest(self) -> list:
        """The last group (the episodes no full group took), as `calls` yields groups."""
        return self._groups(final=True)

    def _groups(self, final: bool) -> list:
        if self.states_of is None:
            self.buffer = []
            return []
        ep = concat_episodes([e for e, _ in self.buffer], pad=encode.pad_token_id(self.env.tokenizer)) \
            if self.buffer else None
        rows = np.concatenate([r for _, r in self.buffer]) if self.buffer else np.zeros(0, np.int64)
        size = self.group_rows if self.group_rows > 0 else len(rows)
        out, lo = [], 0
        while len(rows) - lo >= max(size, 1) or (final and lo < len(rows)):
            part = np.arange(lo, min(lo + size, len(rows)))
            group = ep.select(part)
            waiter = self.host.start(self.states_of, group)
            self.splits.append(waiter)
            out.append(lambda rows=rows[part], group=group, waiter=waiter: EpisodeGroup(rows, group, *self.host.wait(waiter)))
            lo = part[-1] + 1
        self.buffer = [(ep.select(np.arange(lo, len(rows))), rows[lo:])] if lo < len(rows) else []
        return out

    def episodes(self) -> "Episodes":
        return concat_episodes(self.parts, pad=encode.pad_token_id(self.env.tokenizer))

    def rewards(self) -> tuple[np.ndarray, int]:
        """(f32[B] rewards, grade errors) of every episode (`grade_episodes`)."""
        graded = [self.host.wait(w) for w in self.graded]
        return np.concatenate([r for r, _ in graded]), sum(e for _, e in graded)

    def steps(self) -> tuple[np.ndarray, np.ndarray]:
        """(int32[B, S] step starts, int32[B] step counts) of every episode (after `rest()`)."""
        parts = [self.host.wait(w) for w in self.splits]
        width = max(p[0].shape[1] for p in parts)
        starts = np.concatenate([np.pad(p[0], ((0, 0), (0, width - p[0].shape[1]))) for p in parts])
        return starts, np.concatenate([p[1] for p in parts])


def sample_episodes(env: sampling.RolloutEnv, problems, num_samples: int, rng: jax.Array,
                    desc: str = "sample") -> Episodes:
    """`num_samples` responses to each problem, generated `env.batch_rows` prompts at a time (all
    at once when 0); each response is capped by `env.budgets` (prompt + response stay within the
    context + BOS) and stops at `env.stops` (`stop_table`), which `finish_response` then replaces
    by EOS."""
    batches = sample_episode_batches(env, problems, num_samples, rng, desc)
    return concat_episodes(list(batches), pad=encode.pad_token_id(env.tokenizer))


def sample_episode_batches(env: sampling.RolloutEnv, problems, num_samples: int, rng: jax.Array,
                           desc: str = "sample") -> Iterator[Episodes]:
    """`sample_episodes` one batch of `env.batch_rows` problems at a time (the same draws): yields
    each batch's Episodes as soon as it is generated, so the caller can grade it while the next
    batch decodes (`problem_index` counts from the first problem of all batches). Sample s of
    problem i draws with keys of (i, s) only (`sampling.generate` ids), whatever the batches."""
    prompts = encode_prompts(env.tokenizer, env.task, problems)
    pad = encode.pad_token_id(env.tokenizer)
    batch_prompts = env.batch_rows if env.batch_rows > 0 else max(len(prompts), 1)
    bar = progress(total=len(prompts), desc=desc)
    for start in range(0, len(prompts), batch_prompts):
        chunk = prompts[start : start + batch_prompts]
        lens = np.array([len(p) for p in chunk], np.int32)
        rows = encode.pad_rows(chunk, int(lens.max()), pad)
        out = sampling.generate(env, rows, lens, rng, num_samples=num_samples,
                                ids=start + np.arange(len(chunk)))
        tokens, logprobs, plen, tlen = sampling.assemble_rows(rows, lens, out, pad, num_samples)
        sampled = to_host((tokens, logprobs, plen, tlen, out.finish_reason))
        index = start + np.repeat(np.arange(len(chunk)), num_samples).astype(np.int32)
        yield finished_episodes(env, sampled, [problems[i] for i in index], index)
        bar.update(len(chunk))
    bar.close()


def finished_episodes(env: sampling.RolloutEnv, sampled: tuple, problems: list, index: np.ndarray) -> Episodes:
    """Episodes of sampled rows `sampled` = (tokens, logprobs, prompt lens, total lens, finish
    reasons) as `assemble_rows` and `generate` give them, each response cut at its stop string
    (`finish_response`: the stop string's tokens become EOS) and decoded to its text."""
    tokenizer, stops, pad = env.tokenizer, env.stops, encode.pad_token_id(env.tokenizer)
    tokens, logprobs, plen, tlen, finish = sampled
    tokens, logprobs = np.asarray(tokens, np.int32), np.asarray(logprobs, np.float32)
    plen, tlen, finish = (np.asarray(x).astype(np.int32) for x in (plen, tlen, finish))
    texts, cuts = [], {}
    for r in range(len(index)):
        text, ids = finish_response(tokenizer, stops, tokens[r, plen[r] : tlen[r]].tolist())
        texts.append(text)
        if finish[r] == sampling.FINISH_STOP:  # the stop string's tokens become EOS
            cuts[r] = ids
    if cuts:
        width = max(tokens.shape[1], max(plen[r] + len(ids) for r, ids in cuts.items()))
        tokens = np.pad(tokens, ((0, 0), (0, width - tokens.shape[1])), constant_values=pad)
        logprobs = np.pad(logprobs, ((0, 0), (0, width - logprobs.shape[1])))
        for r, ids in cuts.items():
            end = plen[r] + len(ids)
            tokens[r, plen[r] : end], tokens[r, end:] = ids, pad
            logprobs[r, end - 1 :] = 0.0  # EOS (and re-spelled tokens) were not sampled; scored later
            tlen[r] = end
    return Episodes(tokens, logprobs, plen, tlen, finish, texts, problems, index)


def concat_episodes(parts: list[Episodes], pad: int = 0) -> Episodes:
    """The rows of several Episodes as one, token rows right-padded with `pad` to the widest."""
    width = max(p.tokens.shape[1] for p in parts)
    widen = lambda x, fill: np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=fill)
    return Episodes(
        tokens=np.concatenate([widen(p.tokens, pad) for p in parts]),
        logprobs=np.concatenate([widen(p.logprobs, 0.0) for p in parts]),
        prompt_lens=np.concatenate([p.prompt_lens for p in parts]),
        total_lens=np.concatenate([p.total_lens for p in parts]),
        finish_reason=np.concatenate([p.finish_reason for p in parts]),
        texts=[t for p in parts for t in p.texts], problems=[q for p in parts for q in p.problems],
        problem_index=np.concatenate([p.problem_index for p in parts]))


def grade_episodes(task, ep: Episodes, workers: int, pool=None):
    """(f32[B] rewards, grade errors): the task's grade for finished responses, 0 for unfinished
    (length) ones, and how many grades raised or timed out (a plug-in grader's NaN, scored 0).
    With `pool`, graded on its thread: returns the function that waits for them (`multihost.split_rows`)."""
    grade = lambda lo, hi: task.grade_batch(ep.texts[lo:hi], ep.problems[lo:hi], num_workers=workers)
    graded = split_rows(grade, len(ep.texts), pool)  # each process grades a share
    finish = lambda r: scored(np.where(ep.finished, np.asarray(r, np.float32), 0.0))
    return finish(graded) if pool is None else (lambda: finish(graded()))


def scored(grades: np.ndarray) -> tuple[np.ndarray, int]:
    """(f32 rewards, errors) of task grades where NaN marks a grade that raised or timed out: scored 0."""
    grades = np.asarray(grades, np.float32)
    errors = np.isnan(grades)
    return np.where(errors, 0.0, grades).astype(np.float32), int(errors.sum())


def token_offsets(tokenizer, ids: list, text: str) -> list[tuple[int, int]]:
    """(start, end) character span in `text` (= decode(ids)) of each sampled token.

    Fast path: re-tokenizing `text` usually gives back `ids`, and then its offsets apply; otherwise
    (a sampled tokenization the tokenizer would not produce) `tasks.steps.token_char_offsets`
    decodes token by token.
    """
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if list(enc["input_ids"]) == list(ids):
        return [tuple(o) for o in enc["offset_mapping"]]
    return token_char_offsets(tokenizer, ids)


def episode_steps(tokenizer, split_steps, ep: Episodes) -> tuple[np.ndarray, np.ndarray]:
    """Absolute token column where each step starts, int32[B, S], and step counts int32[B].

    `split_steps(text) -> list[str]` is the task's splitter. A response with no text (only EOS)
    is one step. EOS and a trailing stop sequence belong to the last step (their characters lie
    at or past the end of the text). A response the splitter rejects (`StepSplitError`, e.g. two
    "#### " lines) gets 0 steps: VinePPO drops that episode, as the official code does.
    """
    starts_list = []
    for r, text in enumerate(ep.texts):
        try:
            steps = split_steps(text) if text else []
        except StepSplitError:
            starts_list.append([])
            continue
        ids = strip_eos(tokenizer, ep.response_ids(r))
        full = tokenizer.decode(ids, skip_special_tokens=True)
        offsets = token_offsets(tokenizer, ids, full) if ids else []
        rel = step_token_starts(steps, offsets) if steps and offsets else [0]
        starts_list.append([ep.prompt_lens[r] + s for s in rel])
    width = max(len(s) for s in starts_list)
    step_starts = encode.pad_rows(starts_list, max(width, 1), 0)
    num_steps = np.array([len(s) for s in starts_list], np.int32)
    return step_starts, num_steps
