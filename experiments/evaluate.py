"""Evaluate a policy with the paper's protocol (vinejax.train.evaluate):

    python experiments/evaluate.py --model HF_FOLDER_OR_RUN_DIR [--task gsm8k|math|arithmetic|jsonl|pkg.mod:factory]
        [--split test[,validation]] [--samples 16 --temperature 0.35 --top-p 0.9 --greedy]
        [--checkpoints all|last|N,M] [--num-problems N] [--out DIR] [--data-dir ../shared/data]
        [--seed 42] [--config FILE] [--config.key=value ...] [--verbose]

--model is an HF folder (then --task is needed; the config is base_config() or --config FILE)
or a run folder (its recorded config.json is the config). For a run folder, --checkpoints picks
the policies: none given = its exported hf/ (else its newest checkpoint); `last`; `all` (the
paper's checkpoint sweep); or steps `10,20`. Config overrides work as in experiments/run.py, e.g.
`--config.mesh.shape=(1,-1,1)` or `--config.eval.max_new_tokens=512`.

Writes, under --out (default MODEL/eval), `<split>/<label>.json` (metrics: accuracy, maj@n,
unbiased pass@k, greedy accuracy with --greedy, mean response length, fraction unfinished),
`<split>/<label>.predictions.jsonl` (per problem) and, for checkpoints, `accuracy.png`. A
(checkpoint, split) already summarised with the same settings is skipped, so an interrupted
sweep resumes. A missing folder, an unknown task or an unreadable checkpoint ends with one line
naming it (exit status 2); --verbose shows library logs and full tracebacks.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--model", required=True, help="HF model folder or vinejax run folder")
    p.add_argument("--task", default="", help="gsm8k, math, arithmetic, jsonl or a plug-in 'package.module:factory' "
                                              "(default: the run's task)")
    p.add_argument("--split", default="test", help="split(s) to evaluate, comma-separated (default: test)")
    p.add_argument("--checkpoints", default="", help="run folder: all, last or steps N,M (default: its hf/ export)")
    p.add_argument("--samples", type=int, default=None, help="samples per problem (default: eval config, 16)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (default 0.35)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus top-p (default 0.9)")
    p.add_argument("--greedy", action="store_true", help="also greedy accuracy")
    p.add_argument("--num-problems", type=int, default=0, help="the first N problems of each split (0 = all)")
    p.add_argument("--out", default="", help="output folder (default: MODEL/eval)")
    p.add_argument("--data-dir", default=None, help="data folder laid out like shared/data (default: the config's)")
    p.add_argument("--seed", type=int, default=42, help="sampling seed (default 42, the official one)")
    p.add_argument("--verbose", action="store_true", help="library logs and full tracebacks")
    return p


def main(argv: list[str]) -> int:
    args, rest = parser().parse_known_args(argv)
    from vinejax.train.stage import quiet_library_logs, run_command

    quiet_library_logs(args.verbose)

    def body():
        from vinejax.config import ConfigError
        from vinejax.config_file import parse_argv
        from vinejax.train.eval_sweep import EvalRequest, run_evaluation

        config_file, overrides, unknown = parse_argv(rest, require_file=False)
        if unknown:
            raise ConfigError(f"unknown argument {unknown[0]!r} (see --help)")
        run_evaluation(EvalRequest(
            model=args.model, task=args.task, splits=tuple(s.strip() for s in args.split.split(",") if s.strip()),
            checkpoints=args.checkpoints, out=args.out, data_dir=args.data_dir, samples=args.samples,
            temperature=args.temperature, top_p=args.top_p, greedy=args.greedy, num_problems=args.num_problems,
            seed=args.seed, config_file=config_file, overrides=tuple(overrides)))

    return run_command(body, args.verbose)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
