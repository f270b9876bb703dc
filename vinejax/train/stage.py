"""What every stage shares: logging on process 0, the errors a run reports in one line (and the
exit status of a preempted run), the guard before every save, and the problems they train and
evaluate on."""
from __future__ import annotations

import logging
import os
import sys
from typing import Callable

import jax
import numpy as np

from vinejax.checkpoint import Checkpointer, CheckpointError
from vinejax.config import ConfigError
from vinejax.model.config import UnsupportedModelError
from vinejax.paths import StorageError
from vinejax.tasks.data import DataError
from vinejax.train.context import RunContext
from vinejax.train.episodes import encode_prompts
from vinejax.train.preemption import EXIT_PREEMPTED, Preempted
from vinejax.train.update import all_finite


class RunError(RuntimeError):
    """The run stopped for a reason its message names (non-finite updates, a broken state)."""


# What a user can cause and fix: reported as one line by experiments/run.py.
UserError = (ConfigError, DataError, FileNotFoundError, NotADirectoryError, CheckpointError, RunError,
             UnsupportedModelError, StorageError)
EXIT_USER_ERROR = 2


def run_command(body: Callable[[], object], verbose: bool = False) -> int:
    """Exit status of a command-line program: 0 when `body()` returns; 2 with one line
    `error: ...` on stderr for a `UserError` (the full traceback when `verbose`); `EXIT_PREEMPTED`
    (75) when a signal stopped the run at a safe point (checkpoint saved: run it again); 130 for
    a Ctrl-C before the run could catch it."""
    try:
        body()
    except UserError as error:
        if verbose:
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Preempted:
        return EXIT_PREEMPTED  # the runner has said so in one line
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def log(msg: str) -> None:
    """Print on process 0 only."""
    if jax.process_index() == 0:
        print(msg, flush=True)


def quiet_library_logs(verbose: bool = False) -> None:
    """Keep library INFO logs (absl, orbax, jax, transformers, XLA) off the console unless `verbose`."""
    level = logging.INFO if verbose else logging.WARNING
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # XLA's C++ warnings
    for name in ("absl", "orbax", "jax", "transformers", "datasets", "huggingface_hub"):
        logging.getLogger(name).setLevel(level)
    for name in ("gcsfs", "fsspec", "google", "urllib3", "aiohttp"):  # storage clients log their retries
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.CRITICAL)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)
    except ImportError:
        pass


def save_checked(ckpt: Checkpointer, step: int, state, meta: dict) -> None:
    """Save `state` unless a parameter or optimizer moment is not finite (then stop the run,
    naming the last good checkpoint): a broken state never reaches the disk."""
    if not bool(all_finite(state)):
        raise RunError(f"non-finite parameters or optimizer state at step {step}: not saved; "
                       f"the last good checkpoint is {ckpt.latest_step()} in {ckpt.directory}")
    ckpt.save(step, state, meta)


def held_out_problems(ctx: RunContext, splits=None, limit: int | None = None) -> dict:
    """{split: problems} of each eval split (`splits`, default `eval.splits`): its first `limit`
    (default `task.num_eval_problems`; all of it when 0) problems whose prompt leaves room for a
    response in the eval context (the official eval has no prompt-length filter; a prompt that
    long cannot be answered at all). Dropped problems are reported."""
    n = ctx.cfg.task.num_eval_problems if limit is None else limit
    out = {}
    for split in splits or ctx.cfg.eval.splits:
        problems = ctx.task.load_split(split)
        problems = problems[:n] if n > 0 else problems
        lens = [len(p) for p in encode_prompts(ctx.tokenizer, ctx.task, problems)]
        out[split] = [p for p, length in zip(problems, lens) if length - 1 < ctx.eval_context_size]
        if len(out[split]) < len(problems):
            log(f"note: {len(problems) - len(out[split])} of {len(problems)} {split} problems dropped from the "
                f"eval: their prompt fills the eval context of {ctx.eval_context_size} tokens")
    return out


def fitting_problems(ctx: RunContext, problems: list) -> list:
    """The problems whose prompt fits `task.max_prompt_tokens` (longer ones are dropped)."""
    lens = [len(p) for p in encode_prompts(ctx.tokenizer, ctx.task, problems)]
    return [p for p, n in zip(problems, lens) if n <= ctx.cfg.task.max_prompt_tokens]


def iteration_problems(problems: list, seed: int, iteration: int, count: int) -> list:
    """The problems of one iteration: the first `count` (0 = all) of a permutation seeded by (seed, iteration)."""
    order = np.random.default_rng([seed, iteration]).permutation(len(problems))
    return [problems[i] for i in (order[:count] if count > 0 else order)]
