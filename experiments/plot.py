"""Turn a run's metrics.jsonl into PNG curves: accuracy and reward vs iteration, gradient steps
and wall-clock. `python experiments/plot.py runs/arith_vineppo [runs/arith_ppo ...] --out plot.png`."""
import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vinejax.train.metrics import read_metrics  # noqa: E402

PANELS = (
    ("iteration", "eval/accuracy", "held-out accuracy (sampled)"),
    ("iteration", "eval/greedy_accuracy", "held-out accuracy (greedy)"),
    ("iteration", "rewards/mean", "training reward"),
    ("train/gradient_steps", "eval/accuracy", "accuracy vs gradient steps"),
    ("time/elapsed", "eval/accuracy", "accuracy vs wall-clock (s)"),
    ("iteration", "kl", "KL to reference"),
)


def load(run_dir: str) -> list:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        raise SystemExit(f"error: no metrics file at {path}")
    return read_metrics(path)


SFT_PANELS = (
    ("iteration", "sft/nll", "SFT loss (per-example token-mean NLL) vs step"),
    ("iteration", "sft/grad_norm", "SFT gradient norm vs step"),
    ("iteration", "eval/accuracy", "held-out accuracy (sampled)"),
)


def is_sft(records: list) -> bool:
    """A run whose metrics are SFT steps (no RL iteration)."""
    return any("sft/nll" in r for r in records) and not any("rewards/mean" in r for r in records)


def plot(run_dirs, out: str) -> str:
    """Curves of one or more runs into one PNG: RL panels, or SFT panels when every run is SFT."""
    runs = [(os.path.basename(os.path.normpath(d)), load(d)) for d in run_dirs]
    panels = SFT_PANELS if all(is_sft(records) for _, records in runs) else PANELS
    fig, axes = plt.subplots(1 if panels is SFT_PANELS else 2, 3, figsize=(15, 4 if panels is SFT_PANELS else 8))
    for label, records in runs:
        for ax, (x_key, y_key, title) in zip(axes.flat, panels):
            pts = [(r[x_key], r[y_key]) for r in records if x_key in r and isinstance(r.get(y_key), (int, float))]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", ms=3, label=label)
            ax.set_title(title)
            ax.set_xlabel(x_key)
            ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
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
