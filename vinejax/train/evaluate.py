"""Held-out evaluation: mean accuracy over n samples at the eval temperature (pass@1), pass@n,
and greedy accuracy."""
from __future__ import annotations

import jax
import numpy as np

from vinejax.train.episodes import grade_episodes, sample_episodes, sampling_config


def evaluate(ctx, params, problems, rng: jax.Array, greedy: bool | None = None) -> dict:
    """Accuracy metrics of `params` on `problems` (config section `eval`; `greedy` overrides `eval.greedy`)."""
    e, tok, task = ctx.cfg.eval, ctx.tokenizer, ctx.task
    batch, workers = ctx.cfg.sampling.batch_size, ctx.cfg.task.grade_workers
    out = {}
    n = e.samples_per_problem
    if n > 0:
        scfg = sampling_config(tok, task, e.temperature, e.top_p, e.max_new_tokens)
        ep = sample_episodes(params, ctx.model_cfg, tok, task, problems, scfg, n, rng, batch, "eval")
        r = grade_episodes(task, ep, workers).reshape(len(problems), n)
        out["eval/accuracy"] = float(r.mean())
        out[f"eval/pass@{n}"] = float((r.max(axis=1) > 0).mean())
        out["eval/length_mean"] = float((ep.total_lens - ep.prompt_lens).mean())
    if e.greedy if greedy is None else greedy:
        scfg = sampling_config(tok, task, 1.0, 1.0, e.max_new_tokens, greedy=True)
        ep = sample_episodes(params, ctx.model_cfg, tok, task, problems, scfg, 1, rng, batch, "eval greedy")
        out["eval/greedy_accuracy"] = float(grade_episodes(task, ep, workers).mean())
    return out
