"""Adaptive K vs fixed K = 9: rollouts, value error, bias and step-advantage error (no model).

States and their true values come from
  * `benchmarks/data/arith_{sft,vine5}_mc256.jsonl.gz`: every state of 2048 / 1024 episodes of the
    arithmetic demo (SFT policy / after 5 VinePPO iterations), true value = mean of 256 MC
    rollouts (`benchmarks/collect_mc_values.py`, see benchmarks/data/README.md), with the real
    trajectories (consecutive states, rewards R, deduplicated prefixes);
  * a synthetic GSM8K-like model (on unless ``--no-synthetic``): 64 problems × 8 samples,
    L = 3..10 steps, prompt values from a mixture (0 w.p. 0.25, 1 w.p. 0.15, else Beta(0.8, 0.8)),
    and each step a martingale move (absorbed at 0/1 w.p. ``--absorb`` = 0.25, else
    Beta(4p, 4(1 − p))); R ~ Bernoulli(last state's value); only the prompt is shared.
Each seed draws fresh 0/1 rollouts from the true values (and a fresh synthetic set) and runs every
method on the same draws. Value MAE is over unique states; advantage MAE over all episode steps,
A_i = V(s_{i+1}) − V(s_i) with V(s_L) = R. Bias: mean over seeds of V̂ − p per state, averaged in
bins of p (its noise is shown by the unbiased fixed-K row).

  python benchmarks/adaptive_k.py [--seeds 20] [--data a.jsonl.gz ...] [--no-synthetic] [--absorb 0.25]
The last two lines: `adaptive rollouts ratio: X` and `adaptive value mae ratio: X` (default
adaptive rule vs K = 9 on the first data set, medians over seeds of the per-seed ratios).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from typing import NamedTuple

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from vinejax.rl import adaptive as A  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = [os.path.join(HERE, "data", f) for f in ("arith_sft_mc256.jsonl.gz", "arith_vine5_mc256.jsonl.gz")]
BINS = np.array([0.0, 1e-9, 0.1, 0.3, 0.7, 0.9, 1 - 1e-9, 1.0 + 1e-9])
BIN_NAMES = ["=0", "(0,.1)", "[.1,.3)", "[.3,.7)", "[.7,.9)", "[.9,1)", "=1"]


class StateSet(NamedTuple):
    """True values of U unique states and the episodes through them."""

    p: np.ndarray        # f64[U] true value
    ids: np.ndarray      # int[B, S] unique-state id per step slot, -1 past the episode's L states
    rewards: np.ndarray  # f64[B] episode reward R


def load_states(path: str) -> StateSet:
    """A `collect_mc_values.py` file (.jsonl or .jsonl.gz) as a StateSet (true value = s / k)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        episodes = [json.loads(line) for line in f]
    index, p, rows = {}, [], []
    for e in episodes:
        row = []
        for key, succ in zip(e["prefix"], e["successes"]):
            if key not in index:
                index[key] = len(p)
                p.append(succ / e["k"])
            row.append(index[key])
        rows.append(row)
    ids = np.full((len(rows), max(len(r) for r in rows)), -1)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = r
    return StateSet(np.array(p), ids, np.array([e["reward"] for e in episodes], np.float64))


def synthetic_states(rng: np.random.Generator, problems: int = 64, samples: int = 8,
                     absorb: float = 0.25) -> StateSet:
    """Martingale trajectories with absorption (see module doc); the prompt state is shared."""
    u = rng.random(problems)
    p0 = np.where(u < 0.25, 0.0, np.where(u < 0.40, 1.0, rng.beta(0.8, 0.8, problems)))
    p, rows, rewards = list(p0), [], []
    for j in range(problems):
        for _ in range(samples):
            row, v = [j], p0[j]
            for _ in range(rng.integers(3, 11) - 1):
                if 0 < v < 1:
                    v = float(rng.random() < v) if rng.random() < absorb else rng.beta(4 * v, 4 * (1 - v))
                row.append(len(p))
                p.append(v)
            rows.append(row)
            rewards.append(float(rng.random() < v))
    ids = np.full((len(rows), max(len(r) for r in rows)), -1)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = r
    return StateSet(np.clip(np.array(p), 0, 1), ids, np.array(rewards))


def step_advantages(values: np.ndarray, st: StateSet) -> np.ndarray:
    """f64[B, S] A_i = V(s_{i+1}) − V(s_i), V(s_L) = R; NaN past L."""
    v = np.where(st.ids >= 0, values[np.maximum(st.ids, 0)], np.nan)
    length = (st.ids >= 0).sum(1)
    nxt = np.concatenate([v[:, 1:], np.full((len(v), 1), np.nan)], 1)
    last = np.arange(v.shape[1])[None] == (length - 1)[:, None]
    nxt = np.where(last, st.rewards[:, None], nxt)
    return nxt - v


# ------------------------------------------------------------------------------------ methods
ADAPTIVE = A.AdaptiveConfig()  # the proposed default (vineppo.adaptive): tiers (3..12), (9..12), 12
CHEAPER = A.AdaptiveConfig(rules=(A.Rule(3, 3, 12, 0.0), A.Rule(3, 6, 12, 0.0), A.Rule(3, 12, 12, 0.0)))
K2 = A.AdaptiveConfig(rules=(A.Rule(2, 2, 12, 0.0), A.Rule(2, 6, 12, 0.0), A.Rule(2, 12, 12, 0.0)))
OWN_ONLY = A.AdaptiveConfig(rules=(A.Rule(3, 3, 12, 0.0),))
ORACLE = A.AdaptiveConfig(rules=(A.Rule(3, 3, 3, 0.0), A.fixed_rule(9)._replace(round_size=3)))
METHODS = {  # name: (config, tiers: "evidence" / "oracle" / None, plain mean instead of the unbiased table)
    "K=9 fixed": (A.fixed_rule(9), None, False),
    "K=4 fixed": (A.fixed_rule(4), None, False),
    "K=12 fixed": (A.fixed_rule(12), None, False),
    "adaptive (default)": (ADAPTIVE, "evidence", False),
    "adaptive, tier 1 min 6": (CHEAPER, "evidence", False),
    "adaptive, rounds of 2": (K2, "evidence", False),
    "own-unanimity only (3..12)": (OWN_ONLY, None, False),
    "oracle: settled 3, others 9": (ORACLE, "oracle", False),
    "adaptive, plain s/n (biased)": (ADAPTIVE, "evidence", True),
    "own-unanimity, plain s/n (biased)": (OWN_ONLY, None, True),
}


def run_method(x: np.ndarray, st: StateSet, cfg, tiers, plain: bool, rng) -> tuple[np.ndarray, np.ndarray]:
    """(rollouts int[U], V̂ f64[U]) of one method on the pre-drawn outcomes x {0,1}[U, M].

    The oracle knows which states are settled (true value 0 or 1): 3 rollouts there, 9 elsewhere;
    it bounds what any tiering with rounds of 3 can save at K = 9's error on the other states."""
    if tiers == "evidence":
        tier = lambda n, s: A.evidence_tiers(st.ids, st.rewards, n, s)  # noqa: E731
    elif tiers == "oracle":
        tier = np.where((st.p == 0) | (st.p == 1), 0, 1)
    else:
        tier = None
    res = A.run_rounds(x, cfg, tier=tier, rng=rng)
    value = res.s / res.n if plain else res.value.astype(np.float64)
    return res.n, value


def evaluate(sets, seeds: int, synthetic: bool, absorb: float = 0.25) -> dict:
    """Per-method, per-seed rollouts / value MAE / advantage MAE, and per-state mean errors."""
    out = {m: dict(rollouts=[], mae=[], adv_mae=[], err=[], p=[]) for m in METHODS}
    for seed in range(seeds):
        rng = np.random.default_rng([seed, 17])
        st = synthetic_states(rng, absorb=absorb) if synthetic else sets
        x = (rng.random((len(st.p), 24)) < st.p[:, None]).astype(np.int64)
        a_true = step_advantages(st.p, st)
        for m, (cfg, tiers, plain) in METHODS.items():
            n, v = run_method(x, st, cfg, tiers, plain, np.random.default_rng(seed))
            a = step_advantages(v, st)
            out[m]["rollouts"].append(n.mean())
            out[m]["mae"].append(np.abs(v - st.p).mean())
            out[m]["adv_mae"].append(np.nanmean(np.abs(a - a_true)))
            out[m]["err"].append(v - st.p)
            out[m]["p"].append(st.p)
    return out


def bias_by_bin(err: list, p: list) -> tuple[np.ndarray, np.ndarray]:
    """Mean signed error per p bin and its standard error (over all seeds' states)."""
    e, q = np.concatenate(err), np.concatenate(p)
    b = np.digitize(q, BINS) - 1
    mean = np.array([e[b == i].mean() if (b == i).any() else np.nan for i in range(len(BIN_NAMES))])
    se = np.array([e[b == i].std() / np.sqrt(max((b == i).sum(), 1)) for i in range(len(BIN_NAMES))])
    return mean, se


def report(title: str, out: dict, p_example: np.ndarray) -> tuple[float, float]:
    settled = np.mean((p_example == 0) | (p_example == 1))
    print(f"\n== {title}: {len(p_example)} unique states, {settled:.0%} with value exactly 0 or 1")
    base = out["K=9 fixed"]
    print(f"{'method':36s} {'rollouts':>8s} {'ratio':>6s} {'val MAE':>8s} {'ratio':>6s} {'adv MAE':>8s} {'ratio':>6s}")
    for m, r in out.items():
        ratio = lambda key: np.median(np.array(r[key]) / np.array(base[key]))
        print(f"{m:36s} {np.mean(r['rollouts']):8.2f} {ratio('rollouts'):6.3f} {np.mean(r['mae']):8.4f} "
              f"{ratio('mae'):6.3f} {np.mean(r['adv_mae']):8.4f} {ratio('adv_mae'):6.3f}")
    print("bias (mean V̂ − p ± s.e.) by true value bin: " + " | ".join(BIN_NAMES))
    for m in ("K=9 fixed", "adaptive (default)", "adaptive, tier 1 min 6", "own-unanimity only (3..12)",
              "adaptive, plain s/n (biased)", "own-unanimity, plain s/n (biased)"):
        mean, se = bias_by_bin(out[m]["err"], out[m]["p"])
        print(f"  {m:36s} " + " ".join(f"{a:+.4f}±{s:.4f}" for a, s in zip(mean, se)))
    r = out["adaptive (default)"]
    return (float(np.median(np.array(r["rollouts"]) / np.array(base["rollouts"]))),
            float(np.median(np.array(r["mae"]) / np.array(base["mae"]))))


def exact_rule_table():
    """Per-p exact numbers of the default tier rules (no simulation): E[N], MAE, bias."""
    print("\n== exact per-state numbers (stop_distribution; bias of the unbiased table is 0 by construction)")
    print(f"{'rule':28s} " + " ".join(f"p={p:<5}" for p in (0, 0.05, 0.2, 0.5)))
    rules = {"K=9 fixed": A.fixed_rule(9), **{f"tier {t} {tuple(r)}": r for t, r in enumerate(ADAPTIVE.rules)}}
    for name, rule in rules.items():
        cells = []
        for p in (0, 0.05, 0.2, 0.5):
            d = A.stop_distribution(p, rule)
            f = np.nan_to_num(A.estimate_table(rule))
            plain = np.divide(np.arange(d.shape[1])[None, :], np.maximum(np.arange(d.shape[0])[:, None], 1))
            cells.append(f"N {(d.sum(1) * np.arange(len(d))).sum():4.1f} mae {(d * abs(f - p)).sum():.3f} "
                         f"plain-bias {(d * plain).sum() - p:+.3f}")
        print(f"{name:28s} " + " | ".join(cells))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--data", nargs="*", default=[d for d in DEFAULT_DATA if os.path.exists(d)])
    ap.add_argument("--no-synthetic", dest="synthetic", action="store_false")
    ap.add_argument("--absorb", type=float, default=0.25, help="synthetic: chance per step that a state settles")
    args = ap.parse_args()
    results = []
    for path in args.data:
        st = load_states(path)
        results.append(report(os.path.basename(path), evaluate(st, args.seeds, False), st.p))
    if args.synthetic:
        out = evaluate(None, args.seeds, True, args.absorb)
        example = synthetic_states(np.random.default_rng([0, 17]), absorb=args.absorb)
        results.append(report(f"synthetic GSM8K-like chains (absorb {args.absorb})", out, example.p))
    exact_rule_table()
    rollouts, mae = results[0]
    print(f"\nadaptive rollouts ratio: {rollouts:.3f}")
    print(f"adaptive value mae ratio: {mae:.3f}")


if __name__ == "__main__":
    main()
