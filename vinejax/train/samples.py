"""A few sampled episodes per iteration, readable by a user: prompt, response, extracted answer,
reward, finish reason, and (VinePPO) the steps with their MC values and advantages."""
from __future__ import annotations

import numpy as np

from vinejax import sampling
from vinejax.train.episodes import Episodes


def sample_records(tokenizer, task, ep: Episodes, rewards: np.ndarray, count: int, *, steps=None,
                   state_values: np.ndarray | None = None, token_advantages: np.ndarray | None = None) -> list[dict]:
    """JSON-able records of the first `count` episodes (one per problem first, then the rest).

    With `steps` (a `values.StepStates`: starts int32[B, S], num_steps int32[B]) the response is
    cut into its steps, each with V̂ of the state it starts from (`state_values` f32[B, S]) and
    its advantage (the token advantage at its first token, `token_advantages` f32[B, T],
    unwhitened).
    """
    step_starts, num_steps = (None, None) if steps is None else (steps.starts, steps.num_steps)
    firsts = np.unique(ep.problem_index, return_index=True)[1]
    order = list(firsts) + [r for r in range(len(ep.texts)) if r not in set(firsts)]
    extract = getattr(task, "answer", None)
    records = []
    for r in order[:count]:
        problem = ep.problems[r]
        rec = {
            "problem": problem.problem, "gold": problem.answer,
            "prompt": tokenizer.decode(ep.tokens[r, : ep.prompt_lens[r]].tolist(), skip_special_tokens=True),
            "response": ep.texts[r], "answer": extract(ep.texts[r], problem) if extract else None,
            "reward": float(rewards[r]), "finish": sampling.FINISH_REASONS[int(ep.finish_reason[r])],
            "length": int(ep.total_lens[r] - ep.prompt_lens[r]),
        }
        if step_starts is not None and num_steps is not None:
            n = int(num_steps[r])
            bounds = list(step_starts[r, :n]) + [int(ep.total_lens[r])]
            rec["steps"] = [{
                "text": tokenizer.decode(ep.tokens[r, bounds[i] : bounds[i + 1]].tolist(), skip_special_tokens=True),
                "value": None if state_values is None else float(state_values[r, i]),
                "advantage": None if token_advantages is None else float(token_advantages[r, bounds[i]]),
            } for i in range(n)]
        records.append(rec)
    return records
