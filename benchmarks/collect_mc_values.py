"""Ground-truth state values of a policy: K (e.g. 256) MC rollouts from every VinePPO state.

Samples an iteration's episodes exactly as the VinePPO loop does (`vinejax.train.iteration`), then
draws K continuations from every state and writes one JSON line per episode:
  problem, reward R, num_steps L, k, successes (per state 0..L-1, out of k), prefix (a hash of the
  state's tokens; equal hashes = the same deduplicated state), text.
This is the paper's value-prediction ground truth (VINEPPO.md §9, K = 256) and the data behind
benchmarks/adaptive_k.py (`--states`).

  python benchmarks/collect_mc_values.py --config configs/arith_vineppo.py --init_from RUN_DIR \
      --out states.jsonl --k 256 --problems 64
With --sft_first the SFT stage of configs/arith_sft.py is trained into --init_from first.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import sys
import time

import jax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from vinejax import config as config_lib  # noqa: E402
from vinejax.train.context import build_context  # noqa: E402
from vinejax.train.episodes import episode_steps, grade_episodes, sample_episodes  # noqa: E402
from vinejax.train.loop import run  # noqa: E402
from vinejax.train.stage import iteration_problems  # noqa: E402
from vinejax.train.values import StepStates, mc_rewards  # noqa: E402


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("cfg_module", path)
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    spec.loader.exec_module(mod)
    return mod.get_config()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/arith_vineppo.py")
    ap.add_argument("--init_from", default="", help="run dir of the policy (its hf/ folder); \"\" = random")
    ap.add_argument("--sft_first", action="store_true", help="train configs/arith_sft.py into --init_from")
    ap.add_argument("--out", required=True)
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--group", type=int, default=8, help="problems per MC call (memory)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grade_workers", type=int, default=2)
    ap.add_argument("--chunk_rows", type=int, default=0, help="continuation rows per decode call (0 = config)")
    ap.add_argument("--sft_steps", type=int, default=0, help="with --sft_first: SFT steps (0 = config)")
    args = ap.parse_args()

    if args.sft_first:
        sft = load_config(os.path.join(os.path.dirname(os.path.abspath(args.config)), "arith_sft.py"))
        sft.output_dir = args.init_from
        if args.sft_steps:
            sft.sft.max_steps = args.sft_steps
        t0 = time.time()
        run(sft)
        print(f"sft done in {time.time() - t0:.0f}s", flush=True)

    cfg = load_config(args.config)
    cfg.model.init_from = args.init_from
    cfg.vineppo.num_rollouts = args.k
    cfg.task.grade_workers = args.grade_workers
    if args.chunk_rows:
        cfg.vineppo.chunk_rows = args.chunk_rows
    cfg.seed = args.seed
    ctx, params, origin = build_context(cfg)
    print(f"policy from {origin}", flush=True)
    problems = iteration_problems(ctx.task.load_split(cfg.task.train_split), args.seed, 0, args.problems)
    s = cfg.sampling
    env = ctx.rollout(params)
    rng = jax.random.key(args.seed)
    with open(args.out, "w") as f, ctx.mesh_context():
        for g in range(0, len(problems), args.group):
            t0 = time.time()
            r_sample, r_mc = jax.random.split(jax.random.fold_in(rng, g))
            ep = sample_episodes(env, problems[g:g + args.group], s.samples_per_problem, r_sample)
            rewards, _ = grade_episodes(ctx.task, ep, cfg.task.grade_workers)
            starts, num_steps = episode_steps(ctx.tokenizer, ctx.task.split_steps, ep)
            states = StepStates.of(starts, num_steps, config_lib.max_value_step(cfg))
            mc_r, _, stats = mc_rewards(env.replace(batch_rows=0), ep, states, r_mc, args.k)
            succ = mc_r.sum(-1).round().astype(int)  # [B, S]
            for b in range(len(rewards)):
                n = int(num_steps[b])
                pref = [hashlib.md5(ep.tokens[b, : starts[b, i]].tobytes()).hexdigest()[:12] for i in range(n)]
                f.write(json.dumps(dict(problem=g + int(ep.problem_index[b]), reward=float(rewards[b]),
                                        num_steps=n, k=args.k, successes=succ[b, :n].tolist(), prefix=pref,
                                        text=ep.texts[b])) + "\n")
            f.flush()
            print(f"problems {g}..{g + args.group}: {stats['mc/unique_states']:.0f} states, "
                  f"{time.time() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    main()
