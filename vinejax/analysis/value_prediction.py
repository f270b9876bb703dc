"""The paper's §9 value-prediction analysis: how well do the PPO critic and Monte Carlo estimates
predict state values, and how well do they rank alternative next steps?

Official counterparts: `treetune/analyzers/valnet_prediction_analyzer.py`,
`mc_value_prediction_analyzer.py`, `action_ranking_analyzer.py` and its valnet / MC subclasses.

1. States: one fresh episode of the policy per held-out problem (the task's eval split), cut at
   its states as VinePPO cuts training episodes (`states`, `state_interval`, `max_states`:
   `train.states.StateRule`; by default the task's step boundaries): state i is the prompt
   plus the first i steps (segments), i = 1 .. L-1 (the prompt alone only with
   `include_prompt_state`; the state after the last step is terminal). A random subset of at
   most `num_states` is kept.
2. Ground truth V(s): the mean reward of `gt_rollouts` continuations of s, sampled from the
   episode's KV cache by `sampling.continue_from_prefixes` and graded like training episodes
   (`train.values.mc_rewards`: the remaining token budget of the episode, 0 when unfinished).
3. Estimators: the critic's value at the state's last token (`train.scoring.critic_values`
   alignment: column len(s)); MC with K rollouts for K in `mc_ks`: the first K of max(mc_ks)
   further rollouts drawn beside the ground-truth ones with their own sample keys, so each MC-K
   is an unbiased K-sample mean independent of the ground truth (the official MC analyzer
   instead subsamples the ground-truth returns, which shares their noise); a constant: the mean
   reward of the episodes.
4. Ranking: from `ranking_states` states drawn from all states of the episodes (not only the
   `num_states` subset), `num_candidates` continuations
   (temperature `candidate_temperature`); the step that follows the state in each (the state
   rule on prefix + continuation: the next step, or the next `state_interval` tokens) is a
   candidate action a. Distinct candidates (by tokens)
   are kept, states with fewer than `min_candidates` dropped. Q(s, a) is the value of the prefix
   s + a: ground truth from `gt_rollouts`, the critic at its last token, MC-K as above, and
   random scores. The final step's action stops before the stop string / EOS, so s + a is a
   state the policy continues from (the official analyzer works on text the same way).
"""
from __future__ import annotations

import dataclasses
import time
from typing import NamedTuple, Optional

import jax
import numpy as np

from vinejax import sampling
from vinejax.analysis import stats
from vinejax.analysis.candidates import continuation_episodes, distinct_candidates, next_step_ends
from vinejax.analysis.setup import Setup
from vinejax.plugins import is_import_path
from vinejax.sampling import RolloutEnv
from vinejax.train import encode
from vinejax.train.episodes import Episodes, grade_episodes, sample_episodes, sampling_config
from vinejax.train.metrics import Timer, progress
from vinejax.train.stage import fitting_problems, held_out_problems
from vinejax.train.states import BUILTIN, StateRule, episode_states
from vinejax.train.values import StepStates, critic_token_values, mc_rewards


@dataclasses.dataclass(frozen=True)
class AnalysisConfig:
    """Sizes and sampling of one analysis (defaults: the paper's, with fewer states)."""

    num_problems: int = 256  # held-out problems sampled (one episode each); 0 = all of the split
    num_states: int = 512  # states kept for the value metrics (random subset)
    gt_rollouts: int = 256  # K_gt
    mc_ks: tuple = (1, 3, 9)
    ranking_states: int = 128  # states from which candidate actions are sampled
    num_candidates: int = 5
    min_candidates: int = 3  # distinct candidates a ranked state needs
    temperature: Optional[float] = None  # episodes and rollouts; None = the run's sampling temperature
    top_p: Optional[float] = None  # None = the run's sampling top_p
    candidate_temperature: float = 1.0  # official: candidates sampled at T = 1 (top_p as above)
    include_prompt_state: bool = False  # official value analyzer: intermediate states only
    states: str = "steps"  # where the states are (`vineppo.states`): "steps", "tokens" or "pkg.module:fn"
    state_interval: int = 8  # "tokens": response tokens between states (`vineppo.state_interval`)
    max_states: int = 0  # cap on states per response (`vineppo.max_states`); 0 = none
    bootstrap: int = 1000  # resamples per confidence interval
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self):
        checks = [
            (self.num_problems >= 0, "num_problems", "must be >= 0"),
            (self.num_states >= 1, "num_states", "must be >= 1"),
            (self.gt_rollouts >= 1, "gt_rollouts", "must be >= 1"),
            (len(self.mc_ks) > 0 and all(int(k) >= 1 for k in self.mc_ks), "mc_ks", "must be positive integers"),
            (self.ranking_states >= 0, "ranking_states", "must be >= 0"),
            (2 <= self.min_candidates <= self.num_candidates, "min_candidates", "must be in [2, num_candidates]"),
            (self.candidate_temperature > 0, "candidate_temperature", "must be > 0"),
            (self.bootstrap >= 1, "bootstrap", "must be >= 1"),
            (0 < self.confidence < 1, "confidence", "must be in (0, 1)"),
            (self.states in BUILTIN or is_import_path(self.states), "states",
             "must be steps, tokens or an import path pkg.module:fn"),
            (self.state_interval >= 1, "state_interval", "must be >= 1"),
            (self.max_states >= 0, "max_states", "must be >= 0 (0 = no cap)"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise ValueError(f"analysis setting {name}={getattr(self, name)!r} {why}")
        object.__setattr__(self, "mc_ks", tuple(sorted({int(k) for k in self.mc_ks})))


# ----------------------------------------------------------------------------- building blocks


    def state_rule(self, import_dir: str = "") -> StateRule:
        """The states' rule; a user's ("pkg.module:fn") is found on PYTHONPATH or in `import_dir`."""
        return StateRule(self.states, self.state_interval, self.max_states, import_dir)


def state_prefixes(tokenizer, task, ep: Episodes, include_prompt_state: bool,
                   rule: StateRule = StateRule()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every non-terminal state of every episode by `rule`: (episode row int[N], prefix length
    int[N], steps in the prefix int[N]). Episodes the splitter rejects ("steps") have none."""
    step_starts, num_steps = episode_states(tokenizer, task.split_steps, ep, rule)
    first = 0 if include_prompt_state else 1
    found = [(b, step_starts[b, i], i) for b in range(len(num_steps)) for i in range(first, num_steps[b])]
    rows, positions, steps = (np.array([f[j] for f in found], np.int32).reshape(-1) for j in range(3))
    return rows, positions, steps


class _Analysis(NamedTuple):
    """What the analysis's steps share: the setup, its settings, the rollout environment (the
    analysed policy at the analysis's temperature), the phase timer, the rollout calls' (rollouts,
    seconds) and the numpy generator of the subsets."""

    setup: Setup
    acfg: AnalysisConfig
    env: RolloutEnv
    timer: Timer
    durations: list
    np_rng: np.random.Generator


def rollout_rewards(env: RolloutEnv, ep: Episodes, positions: np.ndarray, k: int, rng: jax.Array, desc: str,
                    durations: Optional[list] = None) -> np.ndarray:
    """f32[N, K] rewards of K independent continuations of each prefix `ep.tokens[n, :positions[n]]`,
    graded like VinePPO's MC rollouts (`train.values.mc_rewards`), in groups of about
    4 × `env.chunk_rows` rows (one progress step each; group g uses the key fold_in(rng, g)).
    `durations`, when given, receives (rollouts, seconds) per group."""
    n = len(positions)
    group = max(1, 4 * env.chunk_rows // k)
    out = np.zeros((n, k), np.float32)
    bar = progress(total=n, desc=desc)
    for g, start in enumerate(range(0, n, group)):
        began = time.perf_counter()
        rows = np.arange(start, min(n, start + group))
        states = StepStates(positions[rows, None], np.ones(len(rows), np.int32), np.ones((len(rows), 1), bool))
        rewards, _, _ = mc_rewards(env.replace(batch_rows=0), ep.select(rows), states, jax.random.fold_in(rng, g), k)
        out[rows] = rewards[:, 0]
        if durations is not None:
            durations.append((len(rows) * k, time.perf_counter() - began))
        bar.update(len(rows))
    bar.close()
    return out


def critic_prefix_values(setup: Setup, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """f32[N] critic value of each prefix `tokens[n, :positions[n]]`: the value head after its
    last token (column positions[n] of `train.scoring.critic_values`, as PPO's GAE reads it)."""
    ctx = setup.ctx
    width = encode.length_bucket(int(positions.max()) + 1)
    rows = encode.pad_rows(tokens, width, encode.pad_token_id(ctx.tokenizer))  # tokens past a prefix do not matter
    values = critic_token_values(ctx.mesh, setup.critic, ctx.critic_cfg, rows, ctx.cfg.sampling.batch_size)
    return values[np.arange(len(positions)), positions]


# ----------------------------------------------------------------------------- the analysis


def estimators(an: _Analysis, ep: Episodes, positions: np.ndarray, rng: jax.Array, label: str) -> dict:
    """Ground truth and every estimate of the values of the prefixes (ep rows, positions):
    {"gt": f[N], "critic": f[N] (with a critic), "mc_k{K}": f[N] ...}.

    One rollout call draws K_gt + max(mc_ks) independent continuations per prefix (distinct
    sample keys): the first K_gt make the ground truth, MC-K averages the first K of the rest.
    """
    acfg = an.acfg
    k_gt, k_mc = acfg.gt_rollouts, max(acfg.mc_ks)
    with an.timer(f"{label}_rollouts"):
        rewards = rollout_rewards(an.env, ep, positions, k_gt + k_mc, rng, f"{label} rollouts", an.durations)
    out = {"gt": rewards[:, :k_gt].mean(axis=1)}
    if an.setup.critic is not None:
        with an.timer(f"{label}_critic"):
            out["critic"] = critic_prefix_values(an.setup, ep.tokens, positions)
    out |= {f"mc_k{k}": rewards[:, k_gt : k_gt + k].mean(axis=1) for k in acfg.mc_ks}
    return out


def analyze(setup: Setup, acfg: AnalysisConfig = AnalysisConfig()) -> dict:
    """Run the analysis; returns the report (JSON-able): settings, value and ranking metrics
    with confidence intervals, cost, and the per-state numbers."""
    with setup.ctx.mesh_context():
        return _analyze(setup, acfg)


def _analyze(setup: Setup, acfg: AnalysisConfig) -> dict:
    ctx, cfg = setup.ctx, setup.ctx.cfg
    tok, task, s = ctx.tokenizer, ctx.task, cfg.sampling
    temperature = s.temperature if acfg.temperature is None else acfg.temperature
    top_p = s.top_p if acfg.top_p is None else acfg.top_p
    scfg = sampling_config(tok, temperature, top_p, s.max_new_tokens, top_k=s.top_k)
    rng = jax.random.key(acfg.seed)
    np_rng = np.random.default_rng([acfg.seed, 9])
    timer = Timer()
    durations: list = []  # (rollouts, seconds) of each rollout call
    an = _Analysis(setup, acfg, ctx.rollout(setup.params).replace(scfg=scfg), timer, durations, np_rng)

    problems = fitting_problems(ctx, next(iter(held_out_problems(ctx).values())))  # the first eval split
    problems = problems[: acfg.num_problems] if acfg.num_problems > 0 else problems
    with timer("episodes"):
        ep = sample_episodes(an.env, problems, 1, jax.random.fold_in(rng, 0), desc="episodes")
        rewards, _ = grade_episodes(task, ep, cfg.task.grade_workers)
    all_rows, all_positions, all_steps = state_prefixes(tok, task, ep, acfg.include_prompt_state,
                                                        acfg.state_rule(cfg.import_dir))
    if len(all_rows) == 0:
        raise ValueError("no states: every episode has a single step or was rejected by the step splitter")
    keep = np.sort(np_rng.choice(len(all_rows), size=min(len(all_rows), acfg.num_states), replace=False))
    rows, positions, steps = all_rows[keep], all_positions[keep], all_steps[keep]
    states_ep = ep.select(rows)

    values = estimators(an, states_ep, positions, jax.random.fold_in(rng, 1), "values")
    values["constant"] = np.full(len(rows), float(rewards.mean()))
    indices = stats.bootstrap_indices(len(rows), acfg.bootstrap, np_rng)
    value_report = {name: stats.value_metrics(pred, values["gt"], indices, acfg.confidence)
                    for name, pred in values.items() if name != "gt"}

    ranking, ranked = _ranking(an, ep, all_rows, all_positions, rng)
    rollouts, seconds = (sum(d[i] for d in durations) for i in (0, 1))
    warm = durations[1:]  # every call after the first (which compiles the decode loop)
    warm_rollouts, warm_seconds = (sum(d[i] for d in warm) for i in (0, 1))
    cost = {"seconds": {k: round(v, 2) for k, v in timer.seconds.items()},
            "rollouts": rollouts, "gt_rollouts": acfg.gt_rollouts * (len(rows) + sum(len(c["gt"]) for c in ranked)),
            "rollout_seconds": round(seconds, 2), "rollouts_per_s": rollouts / seconds if seconds > 0 else None,
            "rollouts_per_s_after_first_call": warm_rollouts / warm_seconds if warm_seconds > 0 else None,
            "device": str(jax.devices()[0].device_kind), "devices": jax.device_count()}
    to_list = lambda a: [round(float(x), 6) for x in a]
    return {
        "sources": setup.sources,
        "settings": dataclasses.asdict(acfg) | {"temperature": temperature, "top_p": top_p,
                                                "max_new_tokens": s.max_new_tokens, "task": task.name,
                                                "eval_split": cfg.eval.splits[0]},
        "episodes": {"count": len(ep.texts), "mean_reward": float(rewards.mean()),
                     "finished": float(ep.finished.mean()), "states": len(all_rows)},
        "values": {"num_states": len(rows), "gt_mean": float(values["gt"].mean()),
                   "gt_std": float(values["gt"].std()), "estimators": value_report},
        "ranking": ranking,
        "cost": cost,
        "states": {"episode": rows.tolist(), "steps": steps.tolist(), "position": positions.tolist(),
                   **{name: to_list(v) for name, v in values.items()}},
        "ranked_states": ranked,
    }


def _ranking(an: _Analysis, episodes: Episodes, rows: np.ndarray, positions: np.ndarray,
             rng: jax.Array) -> tuple[dict, list]:
    """Ranking metrics and per-state records (candidates, ground-truth and estimated Q) from
    `ranking_states` states drawn from all states (episode `rows`, prefix `positions`)."""
    ctx, acfg, scfg, timer, np_rng = an.setup.ctx, an.acfg, an.env.scfg, an.timer, an.np_rng
    picked = np.sort(np_rng.choice(len(rows), size=min(len(rows), acfg.ranking_states), replace=False))
    if len(picked) == 0:
        return {"num_states_sampled": 0, "num_states": 0}, []
    with timer("candidates"):
        ep = episodes.select(rows[picked])
        pos = positions[picked]
        budgets = np.maximum(scfg.max_new_tokens - (pos - ep.prompt_lens), 1)
        # candidates run to their budget: the next step is cut from them, stop strings after it
        cand_env = an.env.replace(scfg=scfg.replace(temperature=acfg.candidate_temperature), stops=None)
        out = sampling.continue_from_prefixes(cand_env, ep.tokens, ep.total_lens, pos[:, None],
                                              jax.random.fold_in(rng, 2), acfg.num_candidates,
                                              budgets=budgets[:, None])
        cand = continuation_episodes(ctx.tokenizer, ctx.stops, ep, pos, out)
        cand_pos = np.repeat(pos, acfg.num_candidates)
        ends = next_step_ends(ctx.tokenizer, ctx.task, cand, cand_pos, scfg.max_new_tokens,
                              acfg.state_rule(ctx.cfg.import_dir))
        groups = distinct_candidates(cand, cand_pos, ends, acfg.num_candidates)
    kept = [(i, g) for i, g in enumerate(groups) if len(g) >= acfg.min_candidates]
    summary = {"num_states_sampled": len(picked), "num_states": len(kept),
               "distinct_candidates_mean": float(np.mean([len(g) for g in groups]))}
    if not kept:
        return summary, []
    q_rows = np.array([m for _, g in kept for m in g])
    q = estimators(an, cand.select(q_rows), ends[q_rows], jax.random.fold_in(rng, 3), "ranking")
    q["random"] = np_rng.random(len(q_rows))
    bounds = np.cumsum([0] + [len(g) for _, g in kept])
    split = lambda a: [a[bounds[i] : bounds[i + 1]] for i in range(len(kept))]
    targets = split(q["gt"])
    indices = stats.bootstrap_indices(len(kept), acfg.bootstrap, np_rng)
    summary |= {"num_candidates_mean": float(np.mean([len(g) for _, g in kept])),
                "ceilings": stats.ranking_ceilings(targets),
                "estimators": {name: stats.ranking_metrics(split(v), targets, indices, acfg.confidence)
                               for name, v in q.items() if name != "gt"}}
    records = []
    for r, (i, g) in enumerate(kept):
        prefix_ids = cand.tokens[g[0], cand.prompt_lens[g[0]] : cand_pos[g[0]]].tolist()
        actions = [cand.tokens[m, cand_pos[m] : ends[m]].tolist() for m in g]
        records.append({"episode": int(rows[picked[i]]),
                        "prefix": ctx.tokenizer.decode(prefix_ids, skip_special_tokens=True),
                        "candidates": [ctx.tokenizer.decode(a, skip_special_tokens=True) for a in actions],
                        "candidate_tokens": actions,
                        **{name: [round(float(x), 6) for x in split(v)[r]] for name, v in q.items()}})
    return summary, records


def summary_line(report: dict) -> str:
    """One line: value MAE / r per estimator, ranking accuracy per estimator, size and cost."""
    v, st = report["values"], report["settings"]
    rule = st["states"] + (f" every {st['state_interval']}" if st["states"] == "tokens" else "") + (
        f", at most {st['max_states']}" if st["max_states"] else "")
    parts = [f"{v['num_states']} states ({rule})"]
    for name, m in v["estimators"].items():
        r = m["pearson"]["value"]
        parts.append(f"{name} MAE {m['mae']['value']:.3f} r {'-' if r is None else f'{r:.2f}'}")
    rk = report["ranking"]
    if rk.get("estimators"):
        fmt = lambda v: "-" if v is None else f"{v:.2f}"
        accs = ", ".join(f"{name} {fmt(m['pairwise']['value'])} ({fmt(m['pairwise_untied']['value'])})"
                         for name, m in rk["estimators"].items())
        parts.append(f"pairwise ranking (untied pairs) over {rk['num_states']} states: {accs}")
    c = report["cost"]
    rate = c["rollouts_per_s"]
    parts.append(f"{c['rollouts']} rollouts in {c['rollout_seconds']:.0f} s" + (f" ({rate:.0f}/s)" if rate else ""))
    return " | ".join(parts)
