"""Sample episodes for a list of problems: token rows, texts, finish flags and rewards.

Shared by the RL iteration and evaluation. Everything here is host-side orchestration around the
jitted `vinejax.sampling.generate`.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from vinejax import sampling
from vinejax.train import encode
from vinejax.train.metrics import progress


@dataclasses.dataclass
class Episodes:
    """B = problems × samples rows (sample-major within a problem)."""

    tokens: np.ndarray  # int32[B, T] prompt + response, right-padded
    logprobs: np.ndarray  # f32[B, T] sampler log-probs aligned with tokens (0 off the response)
    prompt_lens: np.ndarray  # int32[B]
    total_lens: np.ndarray  # int32[B]
    finish_reason: np.ndarray  # int32[B] codes of sampling.FINISH_REASONS
    texts: list  # response texts (special tokens and a trailing stop string removed)
    answers: list  # gold answers, per row
    problem_index: np.ndarray  # int32[B] index into the problem list

    @property
    def finished(self) -> np.ndarray:
        return self.finish_reason != sampling.FINISH_LENGTH

    @property
    def response_mask(self) -> np.ndarray:
        col = np.arange(self.tokens.shape[1])[None]
        return (col >= self.prompt_lens[:, None]) & (col < self.total_lens[:, None])

    def response_ids(self, row: int) -> list:
        return self.tokens[row, self.prompt_lens[row] : self.total_lens[row]].tolist()


def sampling_config(ctx, temperature: float, top_p: float, max_new_tokens: int, greedy: bool = False,
                    top_k: int = 0) -> sampling.SamplingConfig:
    """The task's stop strings and the tokenizer's EOS/pad as a static SamplingConfig."""
    tok = ctx.tokenizer
    stops = tuple(tuple(encode.encode_text(tok, s)) for s in ctx.task.stop_strings if s)
    return sampling.SamplingConfig(
        max_new_tokens=max_new_tokens, temperature=temperature if not greedy else 1.0, top_p=top_p,
        top_k=top_k, greedy=greedy, eos_ids=(tok.eos_token_id,), stop_sequences=stops,
        pad_id=encode.pad_token_id(tok),
    )


def response_texts(ctx, ids_list: list) -> list[str]:
    """Decoded responses (one batched decode) without special tokens or a trailing stop string."""
    texts = ctx.tokenizer.batch_decode(ids_list, skip_special_tokens=True)
    return [_strip_stop(ctx, t) for t in texts]


def _strip_stop(ctx, text: str) -> str:
    for stop in ctx.task.stop_strings:
        if stop and text.endswith(stop):
            return text[: -len(stop)]
    return text


def encode_prompts(ctx, problems) -> list[list[int]]:
    """BOS + prompt tokens of each problem."""
    return [encode.encode_prompt(ctx.tokenizer, ctx.task.prompt(p.problem)) for p in problems]


def sample_episodes(ctx, params, problems, scfg: sampling.SamplingConfig, num_samples: int,
                    rng: jax.Array, batch_prompts: int, desc: str = "sample") -> Episodes:
    """`num_samples` responses to each problem, generated `batch_prompts` prompts at a time."""
    prompts = encode_prompts(ctx, problems)
    pad = encode.pad_token_id(ctx.tokenizer)
    parts = []
    bar = progress(total=len(prompts), desc=desc)
    for start in range(0, len(prompts), batch_prompts):
        chunk = prompts[start : start + batch_prompts]
        lens = np.array([len(p) for p in chunk], np.int32)
        rows = encode.pad_rows(chunk, int(lens.max()), pad)
        with ctx.mesh_context():
            out = sampling.generate(params, ctx.model_cfg, rows, lens, jax.random.fold_in(rng, start),
                                    scfg, num_samples=num_samples)
            tokens, logprobs, plen, tlen = sampling.assemble_rows(rows, lens, out, pad, num_samples)
        parts.append(jax.device_get((tokens, logprobs, plen, tlen, out.finish_reason)))
        bar.update(len(chunk))
    bar.close()
    width = max(p[0].shape[1] for p in parts)
    cat = lambda i, fill: np.concatenate(
        [np.pad(p[i], ((0, 0), (0, width - p[i].shape[1])), constant_values=fill) for p in parts])
    tokens, logprobs = cat(0, pad), cat(1, 0.0)
    plen, tlen, finish = (np.concatenate([p[i] for p in parts]).astype(np.int32) for i in (2, 3, 4))
    index = np.repeat(np.arange(len(problems)), num_samples).astype(np.int32)
    ep = Episodes(tokens.astype(np.int32), logprobs.astype(np.float32), plen, tlen, finish, [],
                  [problems[i].answer for i in index], index)
    ep.texts = response_texts(ctx, [strip_eos(ctx, ep.response_ids(r)) for r in range(len(index))])
    return ep


def strip_eos(ctx, ids: list) -> list:
    """`ids` without a final EOS token."""
    return ids[:-1] if ids and ids[-1] == ctx.tokenizer.eos_token_id else ids


def grade_episodes(ctx, ep: Episodes) -> np.ndarray:
    """f32[B] rewards: the task's grade for finished responses, 0 for unfinished (length) ones."""
    rewards = ctx.task.grade_batch(ep.texts, ep.answers, num_workers=ctx.cfg.task.grade_workers)
    return np.where(ep.finished, np.asarray(rewards, np.float32), 0.0).astype(np.float32)
