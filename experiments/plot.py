"""Turn runs' metrics.jsonl into PNG curves: accuracy and reward vs iteration, gradient steps and
wall-clock. `python experiments/plot.py runs/arith_vineppo [runs/arith_ppo ...] --out plot.png`.
(A run writes its own `curves.png` at each evaluation and at its end; this draws several together.)"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import matplotlib.pyplot as plt  # noqa: E402,F401  (the figures' module, for callers that inspect them)

from vinejax import paths  # noqa: E402
from vinejax.analysis.learning_curves import curves_png  # noqa: E402
from vinejax.train.metrics import read_metrics  # noqa: E402


def load(run_dir: str) -> list:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not paths.exists(path):
        raise SystemExit(f"error: no metrics file at {path}")
    return read_metrics(path)


def plot(run_dirs, out: str) -> str:
    """Curves of one or more runs into one PNG: RL panels, or SFT panels when every run is SFT."""
    paths.write_bytes(out, curves_png([(os.path.basename(os.path.normpath(d)), load(d)) for d in run_dirs]))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", nargs="+", help="run output directories")
    parser.add_argument("--out", default=None, help="PNG path (default: <first run>/curves.png)")
    args = parser.parse_args()
    out = args.out or os.path.join(args.runs[0], "curves.png")
    print(plot(args.runs, out))


if __name__ == "__main__":
    main()
