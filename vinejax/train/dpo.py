"""DPO+ (DPO-Positive, Smaug) as the official VinePPO code runs it: one offline round.

Top to bottom (`DpoStage`): sample `sampling.samples_per_problem` responses to the train problems
with the SFT policy → grade → per problem, every (correct, incorrect) pair, a random subset of
`dpo.max_pairs_per_problem` when there are more → the frozen reference's (= the SFT policy's)
log-prob sum of each response, computed once → `dpo.epochs` epochs over the pairs in batches of
`dpo.batch_size`, each one jitted `update.dpo_step` → evaluation every `dpo.eval_every_steps`
steps and at the end → export of the final policy.

The pairs and reference sums are saved beside the checkpoints, so a resumed run trains on the
same data without sampling again; checkpoints hold (params, optimizer state) at a step, as SFT's do.
"""
from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from vinejax.rl import losses
from vinejax.rl.baseline_data import dpo_positive_pairs
from vinejax.rl.batch import PairBatch
from vinejax.train import encode, update
from vinejax.train.batching import to_microbatches
from vinejax.train.context import RunContext
from vinejax.train.evaluate import evaluate
from vinejax.train.metrics import Timer
from vinejax.train.offline_data import TokenRows, load_arrays, sample_and_grade, save_arrays
from vinejax.train.runner import StepResult
from vinejax.train.scoring import logprob_scorer, score_rows
from vinejax.train.stage import fitting_problems, held_out_problems, iteration_problems, log

SUMMARY_KEYS = (("reward", "rewards/mean"), ("pairs", "dpo/pairs"), ("loss", "dpo_loss"),
                ("margin", "dpo_margin"), ("acc", "reward_accuracy"), ("eval", "eval/accuracy"),
                ("greedy", "eval/greedy_accuracy"))


def reference_sums(ctx: RunContext, params, rows: TokenRows) -> np.ndarray:
    """f32[N]: each row's sum of response-token log-probs under `params` (logits / sampling temperature)."""
    score = lambda p, t: logprob_scorer(p, t, model_cfg=ctx.model_cfg, temperature=ctx.cfg.sampling.temperature)
    per_call, pad = ctx.cfg.sampling.batch_size, encode.pad_token_id(ctx.tokenizer)
    sums = []
    for start in range(0, len(rows), per_call):
        tokens, mask = rows.batch(np.arange(start, min(start + per_call, len(rows))), pad)  # [b, T]
        lp = score_rows(ctx.mesh, score, params, tokens, per_call)  # [b, T]
        sums.append(np.where(mask, lp, 0.0).sum(axis=1))
    return np.concatenate(sums).astype(np.float32) if sums else np.zeros(0, np.float32)


def build_pairs(ctx: RunContext, sft_params, problems: list, rng: jax.Array) -> tuple[dict, dict]:
    """Sample, grade, pair and score with the reference. Returns the arrays training reads
    (`pairs` int[P, 2] (chosen, rejected) indices into the stored token rows `rows_*`, `ref_sums`
    f32[N] per row, `episode_of_row` int[N] the sampled episode each row is) and the round's metrics."""
    cfg, d = ctx.cfg, ctx.cfg.dpo
    timer = Timer()
    with timer("sample"):
        ep, rewards, metrics = sample_and_grade(ctx, sft_params, problems, rng)
    pairs = dpo_positive_pairs(rewards, ep.problem_index, np.random.default_rng([cfg.seed, 0]),
                               d.max_pairs_per_problem, d.reward_threshold)  # [P, 2] episode rows
    if d.max_seq_len > 0:  # official (deepseek): drop pairs with a side longer than max_seq_len
        pairs = pairs[(ep.total_lens[pairs] <= d.max_seq_len).all(axis=1)]
    used = np.unique(pairs)  # the episodes the pairs use, stored once each
    rows = TokenRows.from_episodes(ep, used)
    with timer("reference"):
        ref = reference_sums(ctx, sft_params, rows)  # f32[N]
    paired = np.unique(ep.problem_index[pairs[:, 0]]) if len(pairs) else []
    metrics |= {"dpo/pairs": len(pairs), "dpo/problems_with_pairs": len(paired) / max(len(problems), 1)}
    arrays = {"pairs": np.searchsorted(used, pairs), "ref_sums": ref, "episode_of_row": used} | rows.arrays("rows_")
    return arrays, metrics | timer.as_metrics()


class DpoStage:
    """DPO+ from the SFT policy `sft_params` (also the frozen reference). Its first step samples the
    round and builds the pairs (position 0); each later step is one optimizer step."""

    unit, label, summary_keys = "step", "step", SUMMARY_KEYS

    def __init__(self, ctx: RunContext, sft_params):
        cfg, t = ctx.cfg, ctx.cfg.train
        self.ctx, self.sft_params = ctx, sft_params
        self.eval_problems = held_out_problems(ctx) if t.eval_every > 0 else {}  # {split: problems}
        self.data_file = os.path.join(cfg.output_dir, "dpo_data.npz")
        self.rng = jax.random.key(cfg.seed)
        # evaluated at step 0, every dpo.eval_every_steps steps and at the end (0: at 0 and the end)
        self.eval_every = (cfg.dpo.eval_every_steps or sys.maxsize) if t.eval_every > 0 else None
        self.checkpoint_every = max(t.checkpoint_every, 1)
        self.pad = encode.pad_token_id(ctx.tokenizer)
        self._round = None  # (pairs, reference sums, token rows, optimizer) once built or loaded

    def initial_state(self):
        optimizer = update.stage_optimizer(self.ctx.cfg.optim, 1)  # the state's structure; replaced when built
        return self.sft_params, update.init_opt_state(optimizer, self.sft_params, self.ctx.param_shardings)

    def initial_progress(self) -> dict:
        return {"position": 0, "gradient_steps": 0, "built": False}

    def round(self, arrays: dict | None = None) -> tuple:
        """The round this run built: `arrays` when given, else read back from its file (a resume)."""
        if self._round is None or arrays is not None:
            arrays = load_arrays(self.data_file) if arrays is None else arrays
            pairs, d = arrays["pairs"], self.ctx.cfg.dpo
            optimizer = update.stage_optimizer(self.ctx.cfg.optim, max(d.epochs * len(pairs) // d.batch_size, 1))
            self._round = (pairs, arrays["ref_sums"], TokenRows.from_arrays(arrays, "rows_"), optimizer)
            log(f"DPO+: {len(pairs)} pairs, {self.total()} steps of {d.batch_size} pairs")
        return self._round

    def total(self) -> int:
        d = self.ctx.cfg.dpo
        return d.epochs * (len(self.round()[0]) // d.batch_size)  # drop_last

    def done(self, progress: dict) -> bool:
        return progress["built"] and progress["position"] >= self.total()

    def step(self, state, progress: dict) -> StepResult:
        if not progress["built"]:
            return self.build()
        cfg, d, step = self.ctx.cfg, self.ctx.cfg.dpo, progress["position"]
        pairs, ref, rows, optimizer = self.round()
        epoch, within = divmod(step, len(pairs) // d.batch_size)
        order = np.random.default_rng([cfg.seed, epoch, 13]).permutation(len(pairs))
        chosen, rejected = pairs[order[within * d.batch_size : (within + 1) * d.batch_size]].T  # [b] each
        tokens, mask = rows.batch(np.concatenate([chosen, rejected]), self.pad)  # [2b, T]: chosen rows, then rejected
        batch = PairBatch(*np.split(tokens, 2), *np.split(mask, 2), ref[chosen], ref[rejected])
        params, opt_state, m = update.dpo_step(
            *state, to_microbatches(self.ctx.mesh, batch, d.micro_batch), model_cfg=self.ctx.model_cfg,
            optimizer=optimizer, temperature=cfg.sampling.temperature,
            terms=losses.DpoTerms(d.beta, d.lam, d.label_smoothing))
        done = step + 1
        metrics = {}
        if done == 1 or done % 20 == 0 or done == self.total():  # read back now and then, not every step
            metrics = m = {k: float(v) for k, v in jax.device_get(m).items()}
        return StepResult((params, opt_state), progress | {"position": done, "gradient_steps": done}, metrics,
                          at=done, nonfinite=(bool(m["nonfinite"]),))

    def build(self) -> StepResult:
        """The one round of samples, its pairs and the reference sums, saved beside the checkpoints."""
        cfg = self.ctx.cfg
        problems = fitting_problems(self.ctx, self.ctx.task.load_split(cfg.task.train_split))
        problems = iteration_problems(problems, cfg.seed, 0, cfg.sampling.problems_per_iteration)
        arrays, metrics = build_pairs(self.ctx, self.sft_params, problems, jax.random.fold_in(self.rng, 0))
        save_arrays(self.data_file, arrays)
        optimizer = self.round(arrays)[3]
        params = jax.tree.map(jnp.copy, self.sft_params)  # the steps donate (overwrite) their params
        state = (params, update.init_opt_state(optimizer, params, self.ctx.param_shardings))
        return StepResult(state, {"position": 0, "gradient_steps": 0, "built": True}, metrics, at=0, save=True)

    def evaluate(self, state, progress: dict) -> dict:
        rng = jax.random.fold_in(self.rng, 10**6 + progress["position"])
        return evaluate(self.ctx, state[0], self.eval_problems, rng)

    def policy(self, state):
        return state[0]
