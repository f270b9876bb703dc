"""The paper's §9 value-prediction analysis of a policy and (optionally) a PPO run's critic.

    python experiments/analyze_values.py --policy runs/arith_ppo --ppo_run runs/arith_ppo \
        [--num_states 512 --gt_rollouts 256 --mc_ks 1,3,9 --ranking_states 128] [--out DIR]
        [--states steps|tokens --state_interval 8 --max_states 0]

Writes DIR/value_analysis.json, DIR/value_scatter.png and DIR/ranking_accuracy.png (DIR defaults
to <ppo_run or policy>/value_analysis) and prints a one-line summary.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vinejax.analysis import plots  # noqa: E402
from vinejax.analysis.setup import load_setup  # noqa: E402
from vinejax.analysis.value_prediction import AnalysisConfig, analyze, summary_line  # noqa: E402

DEFAULTS = AnalysisConfig()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True, help="run dir (its exported hf/) or HF folder")
    p.add_argument("--ppo_run", default=None, help="PPO run dir whose checkpointed critic is evaluated")
    p.add_argument("--critic_step", type=int, default=None, help="checkpoint step of the critic (default: newest)")
    p.add_argument("--config", default=None, help="run config.json (or run dir) when there is no PPO run")
    p.add_argument("--out", default=None, help="output folder")
    p.add_argument("--mc_ks", default=",".join(map(str, DEFAULTS.mc_ks)), help="comma-separated MC K values")
    for field in ("num_problems", "num_states", "gt_rollouts", "ranking_states", "num_candidates",
                  "min_candidates", "bootstrap", "seed"):
        p.add_argument(f"--{field}", type=int, default=getattr(DEFAULTS, field))
    for field in ("temperature", "top_p", "candidate_temperature", "confidence"):
        p.add_argument(f"--{field}", type=float, default=getattr(DEFAULTS, field))
    p.add_argument("--include_prompt_state", action="store_true")
    p.add_argument("--states", default=DEFAULTS.states,
                   help="where the states are (vineppo.states): steps (the task's step boundaries), tokens (every "
                        "--state_interval response tokens) or a rule pkg.module:fn (vinejax.train.states)")
    p.add_argument("--state_interval", type=int, default=DEFAULTS.state_interval)
    p.add_argument("--max_states", type=int, default=DEFAULTS.max_states,
                   help="at most this many states per response (vineppo.max_states); 0 = no cap")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    fields = {k: v for k, v in vars(args).items() if k in AnalysisConfig.__dataclass_fields__}
    try:
        acfg = AnalysisConfig(**fields | {"mc_ks": tuple(int(k) for k in args.mc_ks.split(","))})
        setup = load_setup(args.policy, args.ppo_run, args.config, args.critic_step)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    report = analyze(setup, acfg)
    out = args.out or os.path.join(args.ppo_run or args.policy, "value_analysis")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "value_analysis.json"), "w") as f:
        json.dump(report, f, indent=1)
    plots.value_scatter(report, os.path.join(out, "value_scatter.png"))
    plots.ranking_bars(report, os.path.join(out, "ranking_accuracy.png"))
    print(summary_line(report))
    print(f"wrote {out}/value_analysis.json, value_scatter.png, ranking_accuracy.png")
    return report


if __name__ == "__main__":
    main()
