"""SFT stage: maximum likelihood on gold solutions (the policy VinePPO starts from)."""
from __future__ import annotations

import os

import jax
import numpy as np

from vinejax.checkpoint import Checkpointer
from vinejax.config import ConfigError
from vinejax.model.hf import save_hf_model
from vinejax.multihost import is_main_process
from vinejax.train import encode, update
from vinejax.train.batching import to_microbatches
from vinejax.train.context import hf_folder_of_run
from vinejax.train.evaluate import evaluate
from vinejax.train.stage import RunError, held_out_problems, resume, save_checked


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


def run_sft(ctx, params, writer, log) -> dict:
    """The SFT stage; resumes from its checkpoints and is a no-op once its export exists."""
    cfg = ctx.cfg
    export = hf_folder_of_run(cfg.output_dir)
    done_marker = os.path.join(export, "DONE")
    if os.path.exists(done_marker) and cfg.resume:
        log(f"SFT already done: policy cached at {export}")
        return {}
    problems = ctx.task.load_split(cfg.task.train_split)
    rows, masks, dropped = sft_examples(ctx.tokenizer, ctx.task, problems, cfg.sft.max_seq_len,
                                        cfg.sft.target_template)
    total = sft_total_steps(cfg, len(rows))
    per_epoch = max(len(rows) // cfg.sft.batch_size, 1)
    optimizer = update.make_optimizer(cfg.optim, total)
    opt_state = update.init_opt_state(optimizer, params, ctx.param_shardings)
    ckpt = Checkpointer(os.path.join(cfg.output_dir, "checkpoints"), cfg.train.keep_checkpoints)
    (params, opt_state), meta = resume(ckpt, (params, opt_state), cfg.resume, writer)
    step, streak, pending = meta.get("step", 0), 0, []
    pad = encode.pad_token_id(ctx.tokenizer)
    log(f"SFT: {len(rows)} examples ({dropped} of {len(problems)} dropped: longer than sft.max_seq_len "
        f"{cfg.sft.max_seq_len} tokens), {total} steps of {cfg.sft.batch_size}")
    while step < total:
        epoch, within = divmod(step, per_epoch)
        order = epoch_order(cfg.seed, epoch, len(rows))
        tokens, mask = sft_batch(rows, masks, order, within, cfg.sft.batch_size, pad)
        tok_mb, mask_mb = to_microbatches(ctx.mesh, (tokens, mask), cfg.sft.micro_batch)  # [M, mb, T]
        params, opt_state, m = update.sft_step(params, opt_state, tok_mb, mask_mb, model_cfg=ctx.model_cfg,
                                               optimizer=optimizer)
        step += 1
        pending.append(m["nonfinite"])  # read back with the metrics, not every step
        if step == 1 or step % 20 == 0 or step == total:
            for flag in jax.device_get(pending):  # a skipped step changed nothing; too many in a row stop
                streak = streak + 1 if flag else 0
                if streak >= cfg.train.max_nonfinite_steps:
                    raise RunError(f"SFT step {step}: {streak} steps in a row had a non-finite loss or gradient; "
                                   f"the last good checkpoint is {ckpt.latest_step()} in {ckpt.directory}")
            pending = []
            m = {k: float(v) for k, v in jax.device_get(m).items()}
            writer.write(step, {"sft/" + k: v for k, v in m.items()} | {"sft/epoch": epoch, "sft/dropped": dropped})
            log(f"sft step {step}/{total} | nll {m['nll']:.4f}")
        if step % max(cfg.train.checkpoint_every, 1) == 0 or step == total:
            save_checked(ckpt, step, (params, opt_state), {"step": step})
    ckpt.close()
    metrics = {}
    if cfg.train.eval_every > 0:
        metrics = evaluate(ctx, params, held_out_problems(ctx), jax.random.key(cfg.seed + 1))
        writer.write(step, metrics)
        log("SFT eval: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    save_hf_model(params, ctx.model_cfg, export, tokenizer=ctx.tokenizer, source=ctx.source)
    if is_main_process():
        open(done_marker, "w").write("ok\n")
    log(f"SFT policy exported to {export}")
    return metrics
