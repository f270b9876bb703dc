"""The paper's evaluation protocol (the official `sft_*_eval.jsonnet` + `evaluate_predictions`),
one implementation for the in-training eval and `experiments/evaluate.py`.

Per split: `eval.samples_per_problem` samples of each problem at `eval.temperature` /
`eval.top_p`, each response capped at min(`eval.max_new_tokens`, eval context − prompt); every
response is graded as it stands, whatever stopped it (the official eval ignores the finish
reason: a length-stopped response with a right answer counts); the task's `answer` gives the
extracted answers the majority vote counts. Metrics (`eval_metrics.summarize`): accuracy (mean
over samples), pass@k (unbiased), maj@n, length, unfinished fraction; optionally greedy accuracy
(`eval.greedy`, not in the official protocol). Each problem's samples, answers, verdicts,
lengths and finish reasons come back as a JSON-able record, so every number can be audited.
Each batch of problems is graded on a host thread while the next one decodes.
"""
from __future__ import annotations

import time

import jax
import numpy as np

from vinejax import sampling
from vinejax.sampling import RolloutEnv
from vinejax.train import encode, host_work
from vinejax.train.episodes import Episodes, concat_episodes, sample_episode_batches, scored
from vinejax.train.eval_metrics import majority_index, summarize


def _graded(env: RolloutEnv, ep: Episodes) -> tuple[np.ndarray, list]:
    """f32[B] verdicts of every response (finish reason ignored; NaN where the grade raised or
    timed out) and its extracted answers."""
    task = env.task
    verdicts = np.asarray(task.grade_batch(ep.texts, ep.problems, num_workers=env.grade_workers), np.float32)
    answers = [task.answer(t, p) for t, p in zip(ep.texts, ep.problems)] if task.answer else [None] * len(ep.texts)
    return verdicts, answers


def _sampled_and_graded(env: RolloutEnv, problems: list, n: int, rng: jax.Array,
                        desc: str) -> tuple[Episodes, np.ndarray, list]:
    """n samples of each problem, their verdicts f32[B] and answers: each batch of
    `env.batch_rows` problems is graded on a host thread while the next one decodes."""
    batches = sample_episode_batches(env, problems, n, rng, desc)
    with host_work.session(overlap=True) as host:
        parts = [(ep, host.start(_graded, env, ep)) for ep in batches]
        graded = [host.wait(waiter) for _, waiter in parts]
    ep = concat_episodes([part for part, _ in parts], pad=encode.pad_token_id(env.tokenizer))
    return ep, np.concatenate([v for v, _ in graded]), [a for _, answers in graded for a in answers]


def _sample_record(ep: Episodes, row: int, verdict: float, answer) -> dict:
    return {"response": ep.texts[row], "answer": answer, "correct": float(verdict),
            "length": int(ep.total_lens[row] - ep.prompt_lens[row]),
            "finish": sampling.FINISH_REASONS[int(ep.finish_reason[row])]}


def evaluate_split(ctx, params, problems: list, rng: jax.Array, desc: str = "eval",
                   greedy: bool | None = None) -> tuple[dict, list[dict]]:
    """Metrics of `params` on `problems` (config section `eval`) and one record per problem:
    index, problem, gold, samples [{response, answer, correct, length, finish}], majority
    (the voted sample's index), greedy (when `eval.greedy`, or `greedy` when given). Call under
    `ctx.mesh_context()`."""
    e, task, n = ctx.cfg.eval, ctx.task, ctx.cfg.eval.samples_per_problem
    records = [{"index": i, "problem": p.problem, "gold": p.answer} | (
        {"unique_id": p.meta["unique_id"]} if "unique_id" in p.meta else {}) for i, p in enumerate(problems)]
    metrics: dict = {}
    if not problems:
        return metrics, records
    rng_sample, rng_greedy = jax.random.split(rng)
    if n > 0:
        ep, graded, answers = _sampled_and_graded(ctx.rollout(params, evaluation=True), problems, n, rng_sample, desc)
        verdicts, errors = scored(graded)
        per_problem = [answers[i * n:(i + 1) * n] for i in range(len(problems))]
        metrics = summarize(verdicts.reshape(-1, n), per_problem if task.answer else None,
                            (ep.total_lens - ep.prompt_lens).reshape(-1, n), ep.finished.reshape(-1, n))
        metrics["grade_errors"] = float(errors)
        for i, rec in enumerate(records):
            rec["samples"] = [_sample_record(ep, r, verdicts[r], answers[r]) for r in range(i * n, (i + 1) * n)]
            if task.answer:
                rec["majority"] = majority_index(per_problem[i])
    if e.greedy if greedy is None else greedy:
        ep, graded, answers = _sampled_and_graded(ctx.rollout(params, greedy=True), problems, 1, rng_greedy,
                                                  desc + " greedy")
        verdicts = scored(graded)[0]
        metrics["greedy_accuracy"] = float(verdicts.mean())
        for i, rec in enumerate(records):
            rec["greedy"] = _sample_record(ep, i, verdicts[i], answers[i])
    return metrics, records


def evaluate(ctx, params, problem_sets: dict, rng: jax.Array) -> dict:
    """In-training metrics of `params` on {split: problems} (`stage.held_out_problems`): the
    first split's as `eval/<metric>` (`eval/accuracy`, `eval/maj@16`, `eval/pass@k`, ...), the
    others' as `eval/<split>/<metric>`; `time/eval` and `time/eval_cpu`: the wall-clock and CPU
    seconds it took (a run's clock minus these is its training time)."""
    out, wall, cpu = {}, time.time(), time.process_time()
    for position, (split, problems) in enumerate(problem_sets.items()):
        metrics, _ = evaluate_split(ctx, params, problems, jax.random.fold_in(rng, position), f"eval {split}")
        prefix = "eval/" if position == 0 else f"eval/{split}/"
        out |= {prefix + key: value for key, value in metrics.items()}
    return out | {"time/eval": time.time() - wall, "time/eval_cpu": time.process_time() - cpu}
