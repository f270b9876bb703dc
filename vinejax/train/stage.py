"""What the SFT and RL stages share: logging on process 0, resuming from the newest checkpoint,
and the problems they train and evaluate on."""
from __future__ import annotations

import jax
import numpy as np

from vinejax.checkpoint import Checkpointer
from vinejax.train.context import RunContext
from vinejax.train.episodes import encode_prompts
from vinejax.train.metrics import MetricsWriter


def log(msg: str) -> None:
    """Print on process 0 only."""
    if jax.process_index() == 0:
        print(msg, flush=True)


def resume(ckpt: Checkpointer, state, enabled: bool, writer: MetricsWriter):
    """(state, meta) from the newest checkpoint when `enabled` and one exists, else (state, {}).

    Metrics logged after the checkpoint are dropped: the resumed run writes them again (an RL
    checkpoint `iteration` i holds the state after i iterations; an SFT one `step` s after s steps;
    one whose meta has `records` n was saved when the metrics file had n lines).
    """
    step = ckpt.latest_step() if enabled else None
    if step is None:
        return state, {}
    state, meta = ckpt.restore(step, state)
    if "records" in meta:
        writer.keep_first(meta["records"])
    else:
        writer.truncate_after(step - 1 if "iteration" in meta else step)
    log(f"resumed at step {step} from {ckpt.directory}")
    return state, meta


def held_out_problems(ctx: RunContext) -> list:
    """The first `task.num_eval_problems` of the eval split (all of it when 0)."""
    problems = ctx.task.load_split(ctx.cfg.task.eval_split)
    n = ctx.cfg.task.num_eval_problems
    return problems[:n] if n > 0 else problems


def fitting_problems(ctx: RunContext, problems: list) -> list:
    """The problems whose prompt fits `task.max_prompt_tokens` (longer ones are dropped)."""
    lens = [len(p) for p in encode_prompts(ctx.tokenizer, ctx.task, problems)]
    return [p for p, n in zip(problems, lens) if n <= ctx.cfg.task.max_prompt_tokens]


def iteration_problems(problems: list, seed: int, iteration: int, count: int) -> list:
    """The problems of one iteration: the first `count` (0 = all) of a permutation seeded by (seed, iteration)."""
    order = np.random.default_rng([seed, iteration]).permutation(len(problems))
    return [problems[i] for i in (order[:count] if count > 0 else order)]
