"""Pooled MC values (`vineppo.pool_continuations`, `vinejax.rl.pooling`) against the paper's plain
mean, on a real policy's states: value error and advantage sign agreement at K = 3..9.

Samples an iteration's episodes as the loop does (`configs/arith_vineppo.py`'s policy from
--init_from, e.g. the arithmetic SFT run of docs/results.md §2), draws --k (128) continuations
from every state with the pooling budgets (`pooling.extended_budgets`), grades them, and finds
which pass through later states of their episode (`pooling.pass_through`). Halves of the draws:
  * truth: each state's pooled value over draws k/2..k−1 (its own and the passing ones);
  * estimates: K of draws 0..k/2−1 per distinct state (a fresh subset per seed), the plain mean
    of its own K and the pooled mean (own K + those of earlier states' K that pass through it).
Metrics (medians over --seeds of per-seed ratios to plain K = 9): value MAE over distinct states;
advantage sign agreement over episode steps, A_i = V(s_{i+1}) − V(s_i), V(s_L) = R.

  python benchmarks/pooled_values.py --init_from RUN_DIR [--problems 128] [--k 128] [--seeds 20]
Last lines: `pooled value mae ratio: X` (pooled K = 9 ÷ plain K = 9, the same rollouts),
`pooled rollouts ratio at equal error: X` (the smallest K whose pooled MAE ≤ plain K = 9's, ÷ 9).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from collect_mc_values import load_config  # noqa: E402

from vinejax import config as config_lib  # noqa: E402
from vinejax import sampling  # noqa: E402
from vinejax.rl import pooling  # noqa: E402
from vinejax.train.context import build_context  # noqa: E402
from vinejax.train.episodes import episode_steps, grade_episodes, sample_episodes  # noqa: E402
from vinejax.train.stage import iteration_problems  # noqa: E402
from vinejax.train.values import StepStates, grade_continuations  # noqa: E402


def collect(args):
    """Per group of problems: (graded f32[B, S, k], Continuations without tokens, through
    bool[B, S, k, S], StepStates, official budgets int[B, S], episode rewards f32[B], prefix ids int[B, S])."""
    cfg = load_config(args.config)
    cfg.model.init_from = args.init_from
    cfg.task.grade_workers = args.grade_workers
    ctx, params, origin = build_context(cfg)
    print(f"policy from {origin}", flush=True)
    problems = iteration_problems(ctx.task.load_split(cfg.task.train_split), args.seed, 0, args.problems)
    env = ctx.rollout(params).replace(batch_rows=0)
    rng, parts = jax.random.key(args.seed), []
    with ctx.mesh_context():
        for g in range(0, len(problems), args.group):
            t0 = time.time()
            r_sample, r_mc = jax.random.split(jax.random.fold_in(rng, g))
            ep = sample_episodes(env, problems[g:g + args.group], cfg.sampling.samples_per_problem, r_sample)
            rewards, _ = grade_episodes(ctx.task, ep, cfg.task.grade_workers)
            starts, num_steps = episode_steps(ctx.tokenizer, ctx.task.split_steps, ep)
            states = StepStates.of(starts, num_steps, config_lib.max_value_step(cfg))
            budgets = env.budgets(states.starts)
            wide = pooling.extended_budgets(states.starts, budgets, states.estimated)
            width = max(pooling.decode_width(env.scfg.max_new_tokens, env.context), int(wide.max()))
            wide_env = env.replace(scfg=env.scfg.__class__(**{**env.scfg.__dict__, "max_new_tokens": width}))
            out = sampling.Trajectories(wide_env, ep.tokens, ep.total_lens, ids=np.arange(len(ep.tokens))) \
                .continue_from(states.starts, r_mc, args.k, state_mask=states.estimated, budgets=wide)
            r, c = np.nonzero(states.estimated)
            graded = np.zeros(states.starts.shape + (args.k,), np.float32)
            graded[r, c] = grade_continuations(env, ep, states.starts, out, r, c, np.full(len(r), args.k))
            cont = pooling.Continuations(out.tokens, out.lengths, out.finish_reason)
            clean = pooling.clean_boundaries(env.stop_tables(), ep.tokens, states.starts, states.estimated)
            through = pooling.pass_through(cont, ep.tokens, states.starts, clean)
            uid, _ = sampling.unique_prefixes(ep.tokens, states.starts, states.estimated)
            parts.append((graded, cont._replace(tokens=None), through, states, budgets, rewards, uid))
            print(f"problems {g}..{g + args.group}: {time.time() - t0:.1f}s", flush=True)
    return parts


def estimate(part, draws: np.ndarray, pool: bool):
    """V̂ f32[B, S] from the continuations `draws` (int[B, S, K] slots) of every state."""
    graded, cont, through, states, budgets, _, _ = part
    take = lambda x: np.take_along_axis(x, draws, axis=2)
    sub = pooling.Continuations(None, take(cont.lengths), take(cont.finish))
    thr = np.take_along_axis(through, draws[..., None], axis=2) if pool else np.zeros(draws.shape + through.shape[-1:], bool)
    return pooling.pooled_values(take(graded), sub, thr, states.starts, budgets, states.estimated)[0]


def slots(part, rng, lo: int, k: int):
    """int[B, S, k]: k of draws lo..lo+half−1 of every distinct state (rows sharing a prefix share them)."""
    uid, half = part[6], part[0].shape[2] // 2
    pick = np.stack([rng.permutation(half)[:k] for _ in range(uid.max(initial=0) + 1)]) + lo  # [U, k]
    return pick[np.maximum(uid, 0)]


def metrics(parts, values, truths) -> tuple[float, float]:
    """(value MAE over distinct states, advantage sign agreement over episode steps)."""
    err, agree = [], []
    for part, v, t in zip(parts, values, truths):
        states, rewards, uid = part[3], part[5], part[6]
        first = np.zeros(uid.max(initial=-1) + 1, bool)
        for (b, i) in zip(*np.nonzero(states.estimated)):
            if not first[uid[b, i]]:
                first[uid[b, i]] = True
                err.append(abs(v[b, i] - t[b, i]))
        for b in range(len(rewards)):
            n = int(states.num_steps[b])
            vv = np.append(np.where(states.estimated[b, :n], v[b, :n], rewards[b]), rewards[b])
            tt = np.append(np.where(states.estimated[b, :n], t[b, :n], rewards[b]), rewards[b])
            agree.extend(np.sign(np.diff(vv)) == np.sign(np.diff(tt)))
    return float(np.mean(err)), float(np.mean(agree))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/arith_vineppo.py")
    ap.add_argument("--init_from", required=True, help="run dir of the policy (its hf/ folder)")
    ap.add_argument("--problems", type=int, default=128)
    ap.add_argument("--group", type=int, default=16, help="problems per MC call")
    ap.add_argument("--k", type=int, default=128, help="continuations per state: half for the truth")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grade_workers", type=int, default=1)
    args = ap.parse_args()
    parts = collect(args)
    half = args.k // 2
    truths = [estimate(p, np.broadcast_to(np.arange(half, args.k), p[0].shape[:2] + (half,)), True) for p in parts]
    passes = sum(p[2][..., :half, :].sum() for p in parts) / sum(p[3].estimated.sum() for p in parts)
    print(f"states: {sum(len(np.unique(p[6][p[6] >= 0])) for p in parts)} distinct; a state's {half} truth draws "
          f"pass through {passes / half:.2f} later states each on average")
    res = {}
    for k in (3, 4, 5, 6, 7, 8, 9):
        for pool in (False, True):
            runs = []
            for seed in range(args.seeds):
                rng = np.random.default_rng(seed)
                draws = [slots(p, rng, 0, k) for p in parts]
                runs.append(metrics(parts, [estimate(p, d, pool) for p, d in zip(parts, draws)], truths))
            res[k, pool] = np.array(runs)
    base = res[9, False]
    print(f"{'K':>3s} {'estimator':>8s} {'rollouts ÷ K9':>14s} {'value MAE':>10s} {'÷ plain K9':>11s} {'adv sign':>9s}")
    for (k, pool), r in res.items():
        print(f"{k:3d} {'pooled' if pool else 'plain':>8s} {k / 9:14.3f} {r[:, 0].mean():10.4f} "
              f"{np.median(r[:, 0] / base[:, 0]):11.3f} {r[:, 1].mean():9.3f}")
    equal = next((k for k in range(3, 10) if np.median(res[k, True][:, 0] / base[:, 0]) <= 1.0), 9)
    print(f"peer plain K=9: value mae {base[:, 0].mean():.4f}, sign agreement {base[:, 1].mean():.3f}")
    print(f"pooled value mae ratio: {np.median(res[9, True][:, 0] / base[:, 0]):.3f}")
    print(f"pooled rollouts ratio at equal error: {equal / 9:.3f} (K = {equal}, sign agreement "
          f"{res[equal, True][:, 1].mean():.3f} against {base[:, 1].mean():.3f})")


if __name__ == "__main__":
    main()
