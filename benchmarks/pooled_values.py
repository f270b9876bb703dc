"""Pooled MC values (`vineppo.pool_continuations`, `vinejax.rl.pooling`) and own counts by step
index (`vineppo.rollouts_by_step`) against the paper's plain mean of K = 9, on a real policy's
states: rollouts, value error and advantage sign agreement.

Samples an iteration's episodes as the loop does (`configs/arith_vineppo.py`'s policy from
--init_from, e.g. the arithmetic SFT run of docs/results.md §2), draws --k (128) continuations
from every state with the pooling budgets (`pooling.extended_budgets`), grades them, and finds
which pass through later states of their episode (`pooling.pass_through`). Halves of the draws:
  * truth: each state's pooled value over draws k/2..k−1 (its own and the passing ones);
  * estimates: K (or by_step[i] at step index i) of draws 0..k/2−1 per distinct state (a fresh
    subset per seed): the plain mean of its own, and the pooled mean (its own and those of
    earlier states' draws that pass through it).
Metrics (medians over --seeds of per-seed ratios to plain K = 9): value MAE over distinct states;
advantage sign agreement over episode steps, A_i = V(s_{i+1}) − V(s_i), V(s_L) = R; rollouts =
continuations drawn (each distinct state's own count). Counts by step index are chosen on the
first half of the problem groups (the cheapest of `SCHEDULES` whose pooled value MAE is at most
plain K = 9's) and reported on the other half.

  python benchmarks/pooled_values.py --init_from RUN_DIR [--problems 128] [--k 128] [--seeds 20]
Last lines: `pooled value mae ratio: X` (pooled K = 9 ÷ plain K = 9, the same rollouts),
`pooled rollouts ratio at equal error: X` (the smallest K whose pooled MAE ≤ plain K = 9's, ÷ 9),
`schedule rollouts ratio: X` and `schedule value mae ratio: X` (the chosen counts by step index,
pooled, on the held-out groups).
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
from vinejax.rl import advantages, pooling  # noqa: E402
from vinejax.rl.values import rollouts_by_step  # noqa: E402
from vinejax.train.context import build_context  # noqa: E402
from vinejax.train.episodes import episode_steps, grade_episodes, sample_episodes  # noqa: E402
from vinejax.train.stage import iteration_problems  # noqa: E402
from vinejax.train.values import StepStates, grade_continuations, passing, pooling_decode  # noqa: E402


def collect(args):
    """Per group of problems: (graded f32[B, S, k], Continuations without tokens, through
    bool[B, S, k, S], StepStates, official budgets int[B, S], episode rewards f32[B], prefix ids
    int[B, S], first (row, state) of each distinct prefix int[U, 2])."""
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
            wide_env, wide = pooling_decode(env, states)
            out = sampling.Trajectories(wide_env, ep.tokens, ep.total_lens, ids=np.arange(len(ep.tokens))) \
                .continue_from(states.starts, r_mc, args.k, state_mask=states.estimated, budgets=wide)
            r, c = np.nonzero(states.estimated)
            graded = np.zeros(states.starts.shape + (args.k,), np.float32)
            graded[r, c] = grade_continuations(env, ep, states.starts, out, r, c, np.full(len(r), args.k))
            cont = pooling.Continuations(None, out.lengths, out.finish_reason)
            uid, rep = sampling.unique_prefixes(ep.tokens, states.starts, states.estimated)
            parts.append((graded, cont, passing(env, ep, states, out), states, env.budgets(states.starts), rewards,
                          uid, rep))
            print(f"problems {g}..{g + args.group}: {time.time() - t0:.1f}s", flush=True)
    return parts


def estimate(part, draws: np.ndarray, pool: bool, counts=None):
    """V̂ f32[B, S] from the continuations `draws` (int[B, S, K] slots) of every state, the first
    counts[i] of them at step index i when counts (int[S]) is given."""
    graded, cont, through, states, budgets = part[:5]
    take = lambda x: np.take_along_axis(x, draws, axis=2)
    sub = pooling.Continuations(None, take(cont.lengths), take(cont.finish))
    thr = np.take_along_axis(through, draws[..., None], axis=2) if pool else np.zeros(draws.shape + through.shape[-1:], bool)
    drawn = states.estimated[..., None] & (True if counts is None else np.arange(draws.shape[2]) < counts[:, None])
    return pooling.pooled_values(take(graded), sub, thr, states.starts, budgets, np.broadcast_to(drawn, draws.shape))[0]


def slots(part, rng, lo: int, k: int):
    """int[B, S, k]: k of draws lo..lo+half−1 of every distinct state (rows sharing a prefix share them)."""
    uid, half = part[6], part[0].shape[2] // 2
    pick = np.stack([rng.permutation(half)[:k] for _ in range(uid.max(initial=0) + 1)]) + lo  # [U, k]
    return pick[np.maximum(uid, 0)]


def distinct(part):
    """(bool[B, S] the first row of each distinct estimated state, int[B, S] step indices)."""
    uid, rep = part[6], part[7]
    first = np.zeros(uid.shape, bool)
    first[rep[:, 0], rep[:, 1]] = True
    return first, np.broadcast_to(np.arange(uid.shape[1]), uid.shape)


def metrics(parts, values, truths) -> tuple[float, float]:
    """(value MAE over distinct states, advantage sign agreement over episode steps)."""
    err, agree = [], []
    for part, v, t in zip(parts, values, truths):
        states, rewards = part[3], part[5]
        first, _ = distinct(part)
        err.extend(np.abs(v - t)[first])
        # step advantages with V(s_L) = R; states left unestimated take R (`vine_step_advantages`)
        adv = [np.asarray(advantages.vine_step_advantages(np.where(states.estimated, x, rewards[:, None]), rewards,
                                                          states.num_steps)) for x in (v, t)]
        steps = np.arange(v.shape[1])[None] < states.num_steps[:, None]
        agree.extend((np.sign(adv[0]) == np.sign(adv[1]))[steps])
    return float(np.mean(err)), float(np.mean(agree))


def run_seeds(parts, truths, seeds: int, k: int, pool: bool, by_step: tuple = ()) -> np.ndarray:
    """f[seeds, 2] (value MAE, sign agreement) with K = k, or own counts `by_step` (rl.values.rollouts_by_step)."""
    out = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        kmax = max(by_step) if by_step else k
        values = []
        for p in parts:
            counts = rollouts_by_step(k, by_step, p[3].starts.shape[1])
            values.append(estimate(p, slots(p, rng, 0, kmax), pool, counts))
        out.append(metrics(parts, values, truths))
    return np.array(out)


def cost(parts, k: int, by_step: tuple = ()) -> int:
    """Continuations drawn: each distinct state's own count."""
    total = 0
    for p in parts:
        first, step = distinct(p)
        total += int(rollouts_by_step(k, by_step, step.shape[1])[step[first]].sum())
    return total


SCHEDULES = [(a, b, c) for a in (6, 8, 9, 10, 12, 16) for b in (2, 3, 4) for c in (1, 2, 3) if c <= b]


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
    print(f"states: {sum(int(distinct(p)[0].sum()) for p in parts)} distinct; a state's {half} truth draws "
          f"pass through {passes / half:.2f} later states each on average")
    res = {(k, pool): run_seeds(parts, truths, args.seeds, k, pool) for k in range(3, 10) for pool in (False, True)}
    base = res[9, False]
    ratio = lambda r, b=base: float(np.median(r[:, 0] / b[:, 0]))
    print(f"{'K':>3s} {'estimator':>8s} {'rollouts ÷ K9':>14s} {'value MAE':>10s} {'÷ plain K9':>11s} {'adv sign':>9s}")
    for (k, pool), r in res.items():
        print(f"{k:3d} {'pooled' if pool else 'plain':>8s} {k / 9:14.3f} {r[:, 0].mean():10.4f} {ratio(r):11.3f} "
              f"{r[:, 1].mean():9.3f}")
    equal = next((k for k in range(3, 10) if ratio(res[k, True]) <= 1.0), 9)
    print(f"peer plain K=9: value mae {base[:, 0].mean():.4f}, sign agreement {base[:, 1].mean():.3f}")
    print(f"pooled value mae ratio: {ratio(res[9, True]):.3f}")
    print(f"pooled rollouts ratio at equal error: {equal / 9:.3f} (K = {equal}, sign agreement "
          f"{res[equal, True][:, 1].mean():.3f} against {base[:, 1].mean():.3f})")
    # Own counts by step index, pooled: chosen on the first half of the groups (the cheapest
    # schedule at value MAE <= plain K = 9's), measured on the other half.
    cut = len(parts) // 2
    for name, sel in (("selection", slice(0, cut)), ("held out", slice(cut, None))):
        ps, ts = parts[sel], truths[sel]
        b9 = run_seeds(ps, ts, args.seeds, 9, False)
        if name == "selection":
            scores = {s: (cost(ps, 9, s) / cost(ps, 9), ratio(run_seeds(ps, ts, args.seeds, 9, True, s), b9))
                      for s in SCHEDULES}
            chosen = min((s for s in SCHEDULES if scores[s][1] <= 1.0), key=lambda s: scores[s][0])
            print(f"counts by step index, pooled, chosen on groups 0..{cut - 1} of {len(parts)}: {chosen} "
                  f"(rollouts {scores[chosen][0]:.3f}, value MAE {scores[chosen][1]:.3f} of plain K = 9's)")
            continue
        r = run_seeds(ps, ts, args.seeds, 9, True, chosen)
        plain = run_seeds(ps, ts, args.seeds, 9, False, chosen)
        print(f"held out (groups {cut}..{len(parts) - 1}): plain K = 9 sign agreement {b9[:, 1].mean():.3f}; "
              f"{chosen} plain: value MAE {ratio(plain, b9):.3f}, sign agreement {plain[:, 1].mean():.3f}")
        print(f"schedule rollouts ratio: {cost(ps, 9, chosen) / cost(ps, 9):.3f} ({chosen}, pooled, held out)")
        print(f"schedule value mae ratio: {ratio(r, b9):.3f} (sign agreement {r[:, 1].mean():.3f} against "
              f"{b9[:, 1].mean():.3f})")


if __name__ == "__main__":
    main()
