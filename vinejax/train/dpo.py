"""DPO+ (DPO-Positive, Smaug) as the official VinePPO code runs it: one offline round.

Top to bottom (`run_dpo`): sample `sampling.samples_per_problem` responses to the train problems
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

import jax
import jax.numpy as jnp
import numpy as np

from vinejax.checkpoint import Checkpointer
from vinejax.model.hf import save_hf_model
from vinejax.rl.baseline_data import dpo_positive_pairs
from vinejax.rl.batch import PairBatch
from vinejax.train import encode, update
from vinejax.train.batching import to_microbatches
from vinejax.train.context import RunContext, hf_folder_of_run
from vinejax.train.evaluate import evaluate
from vinejax.train.metrics import MetricsWriter, RunClock, Timer, summary_line
from vinejax.train.offline_data import TokenRows, load_arrays, sample_and_grade, save_arrays
from vinejax.train.scoring import logprob_scorer, score_rows
from vinejax.train.stage import fitting_problems, held_out_problems, iteration_problems, log, resume, save_checked

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


def run_dpo(ctx: RunContext, sft_params, writer: MetricsWriter) -> dict:
    """DPO+ from the SFT policy `sft_params` (also the frozen reference): one round of samples,
    `dpo.epochs` epochs over its pairs, evaluation, checkpoints (exact resume), export."""
    cfg, d, t = ctx.cfg, ctx.cfg.dpo, ctx.cfg.train
    eval_problems = held_out_problems(ctx) if t.eval_every > 0 else {}  # {split: problems}
    data_file = os.path.join(cfg.output_dir, "dpo_data.npz")
    ckpt = Checkpointer(os.path.join(cfg.output_dir, "checkpoints"), t.keep_checkpoints)
    opt_template = update.init_opt_state(update.stage_optimizer(cfg.optim, 1), sft_params, ctx.param_shardings)
    (params, opt_state), meta = resume(ckpt, (sft_params, opt_template), cfg.resume, writer)
    step, evaluated_at = meta.get("step", 0), meta.get("evaluated_at", -1)  # the last step evaluated
    run_clock = RunClock(meta)  # wall-clock and CPU seconds, across resumes
    rng = jax.random.key(cfg.seed)
    clock = lambda: run_clock.as_metrics() | {"train/gradient_steps": step}

    def evaluated() -> dict:
        if t.eval_every <= 0:
            return {}
        return evaluate(ctx, params, eval_problems, jax.random.fold_in(rng, 10**6 + step)) | clock()

    if not meta:  # a fresh run: the one round of samples, its pairs and the reference sums
        problems = fitting_problems(ctx, ctx.task.load_split(cfg.task.train_split))
        problems = iteration_problems(problems, cfg.seed, 0, cfg.sampling.problems_per_iteration)
        arrays, metrics = build_pairs(ctx, sft_params, problems, jax.random.fold_in(rng, 0))
        save_arrays(data_file, arrays)
        params = jax.tree.map(jnp.copy, sft_params)  # the steps donate (overwrite) their params
        metrics |= evaluated()
        evaluated_at = 0
        writer.write(0, metrics)
        log(summary_line(0, metrics, SUMMARY_KEYS))
        save_checked(ckpt, 0, (params, opt_state), {"step": 0, "evaluated_at": 0} | run_clock.as_meta())
    else:  # resumed: the round this run saved
        arrays = load_arrays(data_file)
    pairs, ref, rows = arrays["pairs"], arrays["ref_sums"], TokenRows.from_arrays(arrays, "rows_")
    per_epoch = len(pairs) // d.batch_size  # drop_last
    total = d.epochs * per_epoch
    optimizer = update.stage_optimizer(cfg.optim, max(d.epochs * len(pairs) // d.batch_size, 1))
    if step == 0:
        opt_state = update.init_opt_state(optimizer, params, ctx.param_shardings)
    log(f"DPO+: {len(pairs)} pairs, {total} steps of {d.batch_size} pairs")
    pad = encode.pad_token_id(ctx.tokenizer)
    over_budget, last = False, {}
    while step < total and not over_budget:
        epoch, within = divmod(step, per_epoch)
        order = np.random.default_rng([cfg.seed, epoch, 13]).permutation(len(pairs))
        chosen, rejected = pairs[order[within * d.batch_size : (within + 1) * d.batch_size]].T  # [b] each
        tokens, mask = rows.batch(np.concatenate([chosen, rejected]), pad)  # [2b, T]: chosen rows, then rejected
        batch = PairBatch(*np.split(tokens, 2), *np.split(mask, 2), ref[chosen], ref[rejected])
        params, opt_state, m = update.dpo_step(
            params, opt_state, to_microbatches(ctx.mesh, batch, d.micro_batch), model_cfg=ctx.model_cfg,
            optimizer=optimizer, temperature=cfg.sampling.temperature, beta=d.beta, lam=d.lam,
            label_smoothing=d.label_smoothing)
        step += 1
        at_eval = step == total or (d.eval_every_steps > 0 and step % d.eval_every_steps == 0)
        if step == 1 or step % 20 == 0 or at_eval:
            metrics = {k: float(v) for k, v in jax.device_get(m).items()} | clock()
            if at_eval:
                last, evaluated_at = evaluated(), step
                metrics |= last
            writer.write(step, metrics)
            log(summary_line(step, metrics, SUMMARY_KEYS))
        if at_eval or step % max(t.checkpoint_every, 1) == 0:
            meta = {"step": step, "evaluated_at": evaluated_at} | run_clock.as_meta()
            save_checked(ckpt, step, (params, opt_state), meta)
            over_budget = t.time_budget_minutes > 0 and run_clock.elapsed() > 60 * t.time_budget_minutes
    if over_budget:
        log(f"time budget of {t.time_budget_minutes} min reached at step {step} of {total}")
    if t.eval_every > 0 and evaluated_at != step:  # stopped by the time budget between evaluations
        last = evaluated()
        writer.write(step, last)
    ckpt.close()
    if t.export_hf:
        folder = save_hf_model(params, ctx.model_cfg, hf_folder_of_run(cfg.output_dir), tokenizer=ctx.tokenizer,
                               source=ctx.source)
        log(f"policy exported to {folder}")
    return last
