"""VinePPO MC continuations on realistic lengths: slot refill vs sorted chunks vs re-prefill.

Workload (per task, GSM8K and MATH from shared/data): `--problems` prompts × `--samples`
trajectories, each = BOS + the task's prompt of one problem + the reference solution of a random
problem + EOS, tokenized by a byte-level BPE trained on the data (tests/helpers_tokenizers.py,
vocab `--vocab`). States = the task splitter's step boundaries (`get_task(...).split_steps`,
tokens located as `train.episodes.episode_steps` does); budgets = the official min(1024,
2047 − prefix) (Rho-1B MATH/GSM8K settings); K = 9 continuations per distinct state.
Continuation lengths: a tiny random Llama (near-uniform next-token distribution) continues each
state, and a stop automaton (the sampler's ordinary stop-string path) ends a row after g(first
token) tokens, where g maps token ids to the quantiles of the pooled distribution of "tokens
left after a step boundary" over `--pool` solutions of the task. The scheduler never sees
lengths: they are drawn by sampling, i.i.d. across rows (no correlation with the state, which
is pessimistic for the longest-expected-first queue order).

Measured after a compile run (the same call with a table that stops every row at its first token
compiles the same programs). Refill MC (with and without its tail halvings) and `generate`'s
decode are timed in turns, `--repeats` times, and medians printed: each efficiency ratio comes
from one turn's neighbouring measurements (this machine's speed drifts by 10-30% between
processes and over minutes); chunks and re-prefill are timed once (not with `--quick`). Times are
CPU seconds of this process (wall also printed): on a shared machine other jobs stretch wall
time, not the work done.
  live fraction = useful tokens / slot-steps, for refill (also without its tail halvings,
    `RolloutEnv.tail_halvings = 0`) and for the old sorted chunks;
  efficiency = MC useful tokens per CPU-s ÷ generate's, where generate = full-batch decode
    (every row live, `--slots` rows) at the same cache room as the MC call (a decode step's cost
    grows with the room) = R·(n − 1)/(t(n) − t(1)) for a 32-token prompt and n = room − 32 new
    tokens, prefill excluded (`decode_timer`); also printed against generate at the episodes' own
    room (prompt + max_new_tokens);
  reuse ratio = cost of re-prefilling every distinct state (prompt = the state, `generate` with
    num_samples = K, max(1, R // K) states per call, no refill: the earlier benchmark's baseline)
    ÷ cost of MC with refill; also printed: re-prefill followed by the same refill schedule.
Last lines: `mc live fraction math: X`, `mc efficiency: X` (MATH), `mc reuse ratio: X` (MATH).

  python benchmarks/mc_lengths.py [--tasks gsm8k math] [--problems 1] [--samples 8] [--slots 16] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tests.helpers_tokenizers import byte_level_bpe  # noqa: E402
from vinejax import sampling  # noqa: E402
from vinejax.model import llama  # noqa: E402
from vinejax.model.config import ModelConfig  # noqa: E402
from vinejax.sampling.core import cache_room  # noqa: E402
from vinejax.sampling.env import token_budgets  # noqa: E402
from vinejax.sampling.stops import STOPPED, StopTable  # noqa: E402
from vinejax.tasks import get_task  # noqa: E402
from vinejax.tasks.steps import step_token_starts  # noqa: E402
from vinejax.train import encode  # noqa: E402

# ../shared/data beside the checkout (as tests/conftest.py and benchmarks/grading.py find it)
DATA = os.environ.get("VINEJAX_DATA", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data"))
FIELDS = {"gsm8k": ("gsm8k/train.jsonl", "question", "answer"), "math": ("math/train.jsonl", "problem", "solution")}
MAX_NEW, CONTEXT, K = 1024, 2047, 9


def load_records(task: str) -> tuple[list, list]:
    path, q, a = FIELDS[task]
    with open(os.path.join(DATA, path)) as f:
        recs = [json.loads(line) for line in f]
    return [r[q] for r in recs], [r[a] for r in recs]


def solution_steps(tokenizer, task, text: str) -> tuple[list, list]:
    """(token ids, step start indices) of a solution under the task's splitter."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), step_token_starts(task.split_steps(text), enc["offset_mapping"])


def workload(tokenizer, name: str, problems: int, samples: int, pool: int, rs: np.random.RandomState) -> dict:
    """Trajectories, states and budgets of one task, and the pool of tokens left after a state."""
    task = get_task(name)
    questions, solutions = load_records(name)
    idx = rs.permutation(len(solutions))
    left = []  # tokens a continuation from a step boundary writes to finish the solution (+ EOS)
    for i in idx[:pool]:
        ids, starts = solution_steps(tokenizer, task, solutions[i])
        left += [len(ids) + 1 - s for s in starts]
    rows, starts_all = [], []
    for j in range(problems):
        prompt = encode.encode_prompt(tokenizer, task.prompt(questions[idx[pool + j]]))
        for _ in range(samples):
            ids, starts = solution_steps(tokenizer, task, solutions[idx[rs.randint(pool + problems, len(idx))]])
            rows.append(prompt + ids + [tokenizer.eos_token_id])
            starts_all.append([len(prompt) + s for s in starts])
    lens = np.array([len(r) for r in rows], np.int32)
    tokens = encode.pad_rows(rows, int(lens.max()), encode.pad_token_id(tokenizer))
    width = max(len(s) for s in starts_all)
    pos = encode.pad_rows(starts_all, width, 1)
    mask = np.arange(width)[None] < np.array([len(s) for s in starts_all])[:, None]
    budgets = token_budgets(pos, MAX_NEW, CONTEXT)
    return dict(tokens=tokens, lengths=lens, pos=pos, mask=mask, budgets=budgets, pool=np.array(left),
                prompt_len=float(np.mean([s[0] for s in starts_all])))


def length_automaton(pool: np.ndarray, vocab: int, max_len: int) -> StopTable:
    """A stop table ending a row after g(first token) tokens, g = quantiles of `pool` over ids."""
    g = np.clip(np.quantile(pool, (np.arange(vocab) + 0.5) / vocab, method="inverted_cdf"), 1, max_len).astype(int)
    table = np.zeros((max_len + 1, vocab), np.int32)
    table[0] = np.where(g > 1, g - 1, STOPPED)  # state c >= 1: c tokens still to write
    for c in range(1, max_len + 1):
        table[c] = c - 1 if c > 1 else STOPPED
    return StopTable(next_state=table, strings=("<length>",))


def timed(fn):
    """(wall seconds, CPU seconds of this process, result): CPU time is the steadier measure on a
    shared machine (other jobs stretch wall time, not the work done)."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


def instant(table: StopTable) -> StopTable:
    """The same-shaped table that stops every row at its first token: a warm-up run with it
    compiles exactly the programs of the timed run and decodes almost nothing."""
    return StopTable(next_state=np.full(table.next_state.shape, STOPPED, np.int32), strings=table.strings)


def decode_timer(params, cfg, scfg, rows: int, room: int, prompt: int = 32):
    """A function timing full-batch decode of `generate` (no stops, every row live) with `rows` rows
    at cache room `room` once: returns (wall, CPU) tok/s = rows · (n − 1) / (t(n) − t(1)), n =
    room − prompt new tokens after a `prompt`-token prompt, so the decode cache has exactly `room`
    slots (a decode step reads every slot, wherever the row is) and the prefill (a tiny one)
    cancels. Both programs are compiled here."""
    prompts = np.random.RandomState(1).randint(3, cfg.vocab_size, (rows, prompt)).astype(np.int32)
    lens = np.full((rows,), prompt, np.int32)
    n = room - prompt
    env = sampling.RolloutEnv(params, cfg, scfg.replace(max_new_tokens=n))
    runs = {steps: (lambda steps=steps: sampling.generate(env, prompts, lens, jax.random.key(steps),
                                                          max_new=np.full((rows,), steps)).tokens.block_until_ready())
            for steps in (1, n)}
    for run in runs.values():
        run()  # compile

    def measure() -> tuple[float, float]:
        t = {steps: timed(run)[:2] for steps, run in runs.items()}
        return tuple(rows * (n - 1) / (t[n][i] - t[1][i]) for i in range(2))

    return measure


def reprefill(params, cfg, scfg, w, table, slots: int, seed: int) -> int:
    """Baseline: prefill every distinct state as a prompt, K samples each (`generate`, no
    refill), max(1, slots // K) states per call; returns the tokens written."""
    uid, rep = sampling.unique_prefixes(w["tokens"], w["pos"], w["mask"])
    per = max(1, slots // K)
    bud = w["budgets"][rep[:, 0], rep[:, 1]]
    order = np.argsort(-bud, kind="stable")
    outs = []
    for c in range(0, len(order), per):
        sel = rep[order[c : c + per]]
        pl = w["pos"][sel[:, 0], sel[:, 1]]
        pr = np.zeros((len(sel), int(pl.max())), np.int32)
        for j, (b, p) in enumerate(zip(sel[:, 0], pl)):
            pr[j, :p] = w["tokens"][b, :p]
        outs.append(sampling.generate(sampling.RolloutEnv(params, cfg, scfg, stops=table), pr, pl,
                                      jax.random.key(seed + c), num_samples=K,
                                      max_new=np.repeat(w["budgets"][sel[:, 0], sel[:, 1]], K)))
    jax.block_until_ready([o.tokens for o in outs])
    return sum(int(np.asarray(o.lengths).sum()) for o in outs)


def prefix_rows(w) -> dict:
    """Every distinct state as a trajectory of its own (its prefix only) with one state at its end:
    MC from these re-prefills each state, then schedules exactly like MC from the trajectories."""
    uid, rep = sampling.unique_prefixes(w["tokens"], w["pos"], w["mask"])
    pl = w["pos"][rep[:, 0], rep[:, 1]]
    tokens = np.zeros((len(rep), int(pl.max())), np.int32)
    for j, (b, p) in enumerate(zip(rep[:, 0], pl)):
        tokens[j, :p] = w["tokens"][b, :p]
    return dict(tokens=tokens, lengths=pl, pos=pl[:, None], mask=np.ones((len(rep), 1), bool),
                budgets=w["budgets"][rep[:, 0], rep[:, 1]][:, None])


def run_task(name, tokenizer, params, cfg, scfg, args, rs) -> dict:
    w = workload(tokenizer, name, args.problems, args.samples, args.pool, rs)
    table = length_automaton(w["pool"], cfg.vocab_size, MAX_NEW)
    states = int(w["mask"].sum())
    print(f"\n== {name}: {len(w['tokens'])} trajectories (prompt {w['prompt_len']:.0f} tokens, length mean "
          f"{w['lengths'].mean():.0f} max {w['lengths'].max()}), {states} states; tokens left after a state "
          f"(pool of {len(w['pool'])}): mean {w['pool'].mean():.0f} p50 {np.median(w['pool']):.0f} "
          f"p90 {np.percentile(w['pool'], 90):.0f} p99 {np.percentile(w['pool'], 99):.0f} max {w['pool'].max()}",
          flush=True)

    def mc(data, schedule, seed, stops, halvings=None):
        env = sampling.RolloutEnv(params, cfg, scfg, chunk_rows=args.slots, stops=stops, schedule=schedule,
                                  tail_halvings=halvings)
        return sampling.continue_from_prefixes(env, data["tokens"], data["lengths"], data["pos"], jax.random.key(seed),
                                               K, state_mask=data["mask"], budgets=data["budgets"])

    room = cache_room(int((w["pos"] + w["budgets"])[w["mask"]].max()))
    gen_same = decode_timer(params, cfg, scfg, args.slots, room)
    gen_episode = decode_timer(params, cfg, scfg, args.slots, cache_room(int(w["prompt_len"]) + MAX_NEW))
    paired = [("refill", w, "refill", None), ("refill, no tail halving", w, "refill", 0)]
    once = [] if args.quick else [("chunks", w, "chunks", None), ("re-prefill + refill", prefix_rows(w), "refill", None)]
    for _, data, schedule, halvings in paired + once:
        mc(data, schedule, 0, instant(table), halvings)  # compile
    # MC and generate timed in turns, `--repeats` times: each ratio from neighbouring measurements
    times, gens = {label: [] for label, *_ in paired + once}, []
    for rep in range(args.repeats):
        for label, data, schedule, halvings in paired + (once if rep == 0 else []):
            t, c, out = timed(lambda: mc(data, schedule, 1, table, halvings))
            times[label].append((t, c, out.stats))
        gens.append((gen_same()[1], gen_episode()[1]))
    res = {}
    for label, runs in times.items():
        st = runs[0][2]  # the same rows every run
        t, c = float(np.median([x[0] for x in runs])), float(np.median([x[1] for x in runs]))
        res[label] = dict(c=c, tok=st["live_steps"], live=st["live_fraction"],
                          eff=[st["live_steps"] / x[1] / g[0] for x, g in zip(runs, gens)],
                          eff_episode=[st["live_steps"] / x[1] / g[1] for x, g in zip(runs, gens)])
        print(f"mc {label:23s}: {st['rows']} rows ({st['unique_states']} distinct states), {st['chunks']} call(s) of "
              f"{st['slots']} slots; {st['live_steps']} tokens (mean {st['live_steps'] / st['rows']:.0f}); "
              f"wall {t:.1f} s, CPU {c:.1f} s = {st['live_steps'] / c:,.0f} tok per CPU-s (median of {len(runs)}); "
              f"live fraction {st['live_fraction']:.3f}", flush=True)
    r, r0 = res["refill"], res["refill, no tail halving"]
    med = lambda x: float(np.median(x))
    out = dict(live=r["live"], eff=med(r["eff"]), eff_no_halving=med(r0["eff"]), live_no_halving=r0["live"],
               eff_episode=med(r["eff_episode"]))
    print(f"generate (full rows, {args.slots} rows): {med([g[0] for g in gens]):,.0f} tok per CPU-s at the MC room "
          f"{room}; {med([g[1] for g in gens]):,.0f} at the episode room (medians of {len(gens)}, each measured "
          f"after the MC runs of its turn)")
    print(f"{name}: live fraction refill {out['live']:.3f} (without tail halvings {out['live_no_halving']:.3f}); MC tok / "
          f"generate tok per CPU-s, median of the turns' ratios: refill {out['eff']:.2f} (turns "
          f"{', '.join(f'{x:.2f}' for x in r['eff'])}; without tail halvings {out['eff_no_halving']:.2f}) at the same "
          f"room, {out['eff_episode']:.2f} at the episode room", flush=True)
    if args.quick:
        return out
    reprefill(params, cfg, scfg, w, instant(table), args.slots, 0)  # compile
    t_base, c_base, _ = timed(lambda: reprefill(params, cfg, scfg, w, table, args.slots, 1))
    print(f"re-prefill (generate per state): wall {t_base:.1f} s, CPU {c_base:.1f} s", flush=True)
    ch, pre = res["chunks"], res["re-prefill + refill"]
    out |= dict(live_chunks=ch["live"], eff_chunks=med(ch["eff"]), reuse=c_base / r["c"],
                reuse_chunks=c_base / ch["c"], reuse_same=pre["c"] / r["c"], speedup_chunks=ch["c"] / r["c"])
    print(f"{name}: live fraction chunks {out['live_chunks']:.3f}; refill is "
          f"{out['speedup_chunks']:.2f}x faster than chunks; MC tok / generate tok per CPU-s: "
          f"chunks {out['eff_chunks']:.2f} (same room), refill {out['eff_episode']:.2f} (episode room); "
          f"reuse vs re-prefill: refill {out['reuse']:.2f}x, chunks {out['reuse_chunks']:.2f}x; vs re-prefill with the "
          f"same refill schedule {out['reuse_same']:.2f}x", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="*", default=["gsm8k", "math"])
    ap.add_argument("--problems", type=int, default=1)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--pool", type=int, default=500)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="turns of timed refill MC runs and generate")
    ap.add_argument("--quick", action="store_true", help="refill and generate only (no chunks, no re-prefill)")
    args = ap.parse_args()
    print(f"jax {jax.__version__} devices {jax.devices()} cores {os.cpu_count()}")
    texts = []
    for name in FIELDS:  # one tokenizer whatever --tasks
        q, a = load_records(name)
        texts += a[:300] + q[:300]
    tokenizer = byte_level_bpe(texts, vocab_size=args.vocab)
    cfg = ModelConfig(vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                      num_layers=args.layers, num_heads=4, num_kv_heads=4, head_dim=args.hidden // 4,
                      max_position_embeddings=4096)
    params = llama.init_params(cfg, jax.random.key(0), std=0.02)
    scfg = sampling.SamplingConfig(max_new_tokens=MAX_NEW, temperature=1.0, eos_ids=(),
                                   pad_id=encode.pad_token_id(tokenizer))
    results = {name: run_task(name, tokenizer, params, cfg, scfg, args, np.random.RandomState(0)) for name in args.tasks}
    last = results.get("math", next(iter(results.values())))
    if "math" in results:
        print(f"\nmc live fraction math: {results['math']['live']:.3f}")
    print(f"mc efficiency: {last['eff']:.2f}")
    if "reuse" in last:
        print(f"mc reuse ratio: {last['reuse']:.2f}")


if __name__ == "__main__":
    main()
