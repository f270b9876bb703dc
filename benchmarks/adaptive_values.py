"""Adaptive K vs fixed K = 9 through the integrated values phase, against a large-K ground truth.

One iteration's episodes of a policy (configs/arith_vineppo.py sampling: problems × 8 samples),
their VinePPO states, and a K = `--gt_k` (256) ground truth per distinct state, all from the
real train code (`train.values.mc_rewards`). Then, for `--seeds` MC seeds on those same
episodes: fixed K = 9 (`mc_state_values`, the paper) and adaptive K (`adaptive_rollouts`,
`vineppo.adaptive` defaults) — rollouts drawn per distinct state, value MAE over distinct states
against the ground truth (its own noise, se <= 0.5/sqrt(gt_k), adds the same floor to both), and
wall/CPU seconds of the values phase.

  python benchmarks/adaptive_values.py --init_from /tmp/mcsched_sft [--problems 32] [--seeds 5]
Last lines: `adaptive integrated rollouts ratio: X`, `adaptive integrated value mae ratio: X`
(medians over seeds of adaptive ÷ K = 9).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchmarks.collect_mc_values import load_config  # noqa: E402
from vinejax import config as config_lib  # noqa: E402
from vinejax import sampling  # noqa: E402
from vinejax.train.context import build_context  # noqa: E402
from vinejax.train.episodes import episode_steps, grade_episodes, sample_episodes  # noqa: E402
from vinejax.train.stage import iteration_problems  # noqa: E402
from vinejax.train.values import StepStates, adaptive_rollouts, mc_rewards, mc_state_values  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/arith_vineppo.py")
    ap.add_argument("--init_from", required=True)
    ap.add_argument("--problems", type=int, default=32)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--gt_k", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0, help="episode seed")
    args = ap.parse_args()
    cfg = load_config(args.config)
    cfg.model.init_from = args.init_from
    cfg.task.grade_workers = 0
    cfg.vineppo.adaptive.enabled = True
    acfg = config_lib.adaptive_config(cfg)
    ctx, params, origin = build_context(cfg)
    s = cfg.sampling
    problems = iteration_problems(ctx.task.load_split(cfg.task.train_split), args.seed, 0, args.problems)
    rng = jax.random.key(args.seed)
    env = ctx.rollout(params)
    with ctx.mesh_context():
        ep = sample_episodes(env, problems, s.samples_per_problem, rng)
        rewards, _ = grade_episodes(ctx.task, ep, 0)
        starts, num_steps = episode_steps(ctx.tokenizer, ctx.task.split_steps, ep)
        states = StepStates.of(starts, num_steps, config_lib.max_value_step(cfg))
        est = states.estimated
        uid, rep = sampling.unique_prefixes(ep.tokens, starts, est)
        env = env.replace(batch_rows=0)  # the values phase in one group
        t = time.perf_counter()
        gt_r, _, _ = mc_rewards(env, ep, states, jax.random.fold_in(rng, 999), args.gt_k)
        truth = gt_r.mean(-1)[rep[:, 0], rep[:, 1]]  # [U]
        settled = np.mean((truth == 0) | (truth == 1))
        print(f"{origin}: {len(ep.texts)} episodes, reward {rewards.mean():.3f}, {int(est.sum())} states, "
              f"{len(rep)} distinct ({settled:.0%} with a K={args.gt_k} value of exactly 0 or 1); ground truth "
              f"{time.perf_counter() - t:.0f} s", flush=True)
        rows = {"K=9": [], "adaptive": []}
        for seed in range(args.seeds):
            r_mc = jax.random.fold_in(rng, seed)
            for arm in rows:
                t, c = time.perf_counter(), time.process_time()
                if arm == "K=9":
                    values, m = mc_state_values(env, ep, states, r_mc, 9)
                else:
                    res, m = adaptive_rollouts(env, ep, states, rewards, r_mc, acfg)
                    values = res.values
                wall, cpu = time.perf_counter() - t, time.process_time() - c
                vu = values[rep[:, 0], rep[:, 1]]
                rows[arm].append(dict(rollouts=m["mc/rows"] / len(rep), mae=np.abs(vu - truth).mean(), wall=wall,
                                      cpu=cpu, calls=m.get("adaptive/calls", 1)))
                print(f"seed {seed} {arm:8s}: {rows[arm][-1]['rollouts']:.2f} rollouts/state, value MAE "
                      f"{rows[arm][-1]['mae']:.4f}, {m.get('adaptive/calls', 1):.0f} decode call(s), "
                      f"wall {wall:.1f} s, CPU {cpu:.1f} s", flush=True)
    ratio = lambda key: float(np.median([a[key] / b[key] for a, b in zip(rows["adaptive"], rows["K=9"])]))
    print("\n| arm | rollouts / distinct state | value MAE vs K=%d | decode calls | values-phase CPU s |" % args.gt_k)
    print("| --- | --- | --- | --- | --- |")
    for arm, r in rows.items():
        mean = lambda key: np.mean([x[key] for x in r])
        print(f"| {arm} | {mean('rollouts'):.2f} | {mean('mae'):.4f} ± {np.std([x['mae'] for x in r]):.4f} | "
              f"{mean('calls'):.1f} | {mean('cpu'):.1f} |")
    print(f"\nadaptive integrated rollouts ratio: {ratio('rollouts'):.3f}")
    print(f"adaptive integrated value mae ratio: {ratio('mae'):.3f}")


if __name__ == "__main__":
    main()
