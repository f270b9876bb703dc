"""SFT stage: maximum likelihood on gold solutions (the policy VinePPO starts from)."""
from __future__ import annotations

import jax
import numpy as np

from vinejax.config import ConfigError
from vinejax.train import encode, update
from vinejax.train.batching import to_microbatches
from vinejax.train.evaluate import evaluate
from vinejax.train.runner import StepResult
from vinejax.train.stage import held_out_problems, log


def sft_examples(tokenizer, task, problems, max_seq_len: int, target_template: str) -> tuple[list, list, int]:
    """Token rows and target masks of `prompt + target + EOS` (target = `target_template` with the
    problem's solution, e.g. "\n{solution}\n"), and how many examples were dropped for being
    longer than `max_seq_len` tokens (the official rule)."""
    rows, masks = [], []
    for p in problems:
        toks, mask = encode.task_sft(tokenizer, task, p.problem, target_template.format(solution=p.solution))
        if len(toks) <= max_seq_len:
            rows.append(toks)
            masks.append(mask)
    if not rows:
        raise ConfigError(f"config key 'sft.max_seq_len': no SFT example fits in {max_seq_len} tokens")
    return rows, masks, len(problems) - len(rows)


def sft_total_steps(cfg, num_examples: int) -> int:
    """Optimizer steps of the whole SFT stage."""
    per_epoch = max(num_examples // cfg.sft.batch_size, 1)
    total = per_epoch * cfg.sft.epochs
    return min(total, cfg.sft.max_steps) if cfg.sft.max_steps > 0 else total


def sft_batch(rows, masks, order: np.ndarray, step: int, batch_size: int, pad_id: int):
    """Step `step`'s batch (indices from the permutation `order`), padded to a bucket length."""
    n = len(order)
    idx = order[(step * batch_size + np.arange(batch_size)) % n]
    length = encode.length_bucket(max(len(rows[i]) for i in idx))
    tokens = encode.pad_rows([rows[i] for i in idx], length, pad_id)
    mask = encode.pad_rows([masks[i] for i in idx], length, False, bool)
    return tokens, mask


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The example order of one epoch: a permutation seeded by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


class SFTStage:
    """Maximum likelihood on the gold solutions of the train split, from the policy `params`.
    Its position counts optimizer steps; one step each. Evaluated once, at its end."""

    unit, label = "step", "sft step"
    summary_keys = (("nll", "sft/nll"), ("eval", "eval/accuracy"), ("greedy", "eval/greedy_accuracy"))

    def __init__(self, ctx, params):
        cfg = ctx.cfg
        self.ctx, self.start = ctx, params
        problems = ctx.task.load_split(cfg.task.train_split)
        self.rows, self.masks, self.dropped = sft_examples(ctx.tokenizer, ctx.task, problems, cfg.sft.max_seq_len,
                                                           cfg.sft.target_template)
        self.total = sft_total_steps(cfg, len(self.rows))
        self.per_epoch = max(len(self.rows) // cfg.sft.batch_size, 1)
        self.optimizer = update.stage_optimizer(cfg.optim, self.total)
        self.pad = encode.pad_token_id(ctx.tokenizer)
        self.eval_every = 0 if cfg.train.eval_every > 0 else None
        self.checkpoint_every = max(cfg.train.checkpoint_every, 1)
        log(f"SFT: {len(self.rows)} examples ({self.dropped} of {len(problems)} dropped: longer than sft.max_seq_len "
            f"{cfg.sft.max_seq_len} tokens), {self.total} steps of {cfg.sft.batch_size}")

    def initial_state(self):
        params, self.start = self.start, None  # the steps donate these params
        return params, update.init_opt_state(self.optimizer, params, self.ctx.param_shardings)

    def initial_progress(self) -> dict:
        return {"position": 0, "gradient_steps": 0}

    def done(self, progress: dict) -> bool:
        return progress["position"] >= self.total

    def step(self, state, progress: dict) -> StepResult:
        cfg, step = self.ctx.cfg, progress["position"]
        epoch, within = divmod(step, self.per_epoch)
        order = epoch_order(cfg.seed, epoch, len(self.rows))
        tokens, mask = sft_batch(self.rows, self.masks, order, within, cfg.sft.batch_size, self.pad)
        tok_mb, mask_mb = to_microbatches(self.ctx.mesh, (tokens, mask), cfg.sft.micro_batch)  # [M, mb, T]
        params, opt_state, m = update.sft_step(*state, tok_mb, mask_mb, model_cfg=self.ctx.model_cfg,
                                               optimizer=self.optimizer)
        done = step + 1
        metrics = {}
        if done == 1 or done % 20 == 0 or done == self.total:  # read back now and then, not every step
            m = {k: float(v) for k, v in jax.device_get(m).items()}
            metrics = {"sft/" + k: v for k, v in m.items()} | {"sft/epoch": epoch, "sft/dropped": self.dropped}
        return StepResult((params, opt_state), {"position": done, "gradient_steps": done}, metrics, at=done,
                          nonfinite=(bool(m["nonfinite"]),))

    def evaluate(self, state, progress: dict) -> dict:
        return evaluate(self.ctx, state[0], held_out_problems(self.ctx), jax.random.key(self.ctx.cfg.seed + 1))

    def policy(self, state):
        return state[0]
