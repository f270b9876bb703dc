"""PNG learning curves of runs from their metrics records: RL panels (accuracy and reward against
iterations, gradient steps and wall-clock; KL), or SFT panels when every run is SFT. Written by
the runner as `curves.png` at each evaluation and at the end; `experiments/plot.py` draws several
runs together."""
from __future__ import annotations

import io

from matplotlib.figure import Figure

PANELS = (
    ("iteration", "eval/accuracy", "held-out accuracy (sampled)"),
    ("iteration", "eval/greedy_accuracy", "held-out accuracy (greedy)"),
    ("iteration", "rewards/mean", "training reward"),
    ("train/gradient_steps", "eval/accuracy", "accuracy vs gradient steps"),
    ("time/elapsed", "eval/accuracy", "accuracy vs wall-clock (s)"),
    ("iteration", "kl", "KL to reference"),
)
SFT_PANELS = (
    ("iteration", "sft/nll", "SFT loss (per-example token-mean NLL) vs step"),
    ("iteration", "sft/grad_norm", "SFT gradient norm vs step"),
    ("iteration", "eval/accuracy", "held-out accuracy (sampled)"),
)


def is_sft(records: list) -> bool:
    """A run whose metrics are SFT steps (no RL iteration)."""
    return any("sft/nll" in r for r in records) and not any("rewards/mean" in r for r in records)


def curves_png(runs: list[tuple[str, list[dict]]]) -> bytes:
    """One PNG of the curves of `runs` ([(label, metrics records)]), one colour per run."""
    panels = SFT_PANELS if all(is_sft(records) for _, records in runs) else PANELS
    fig = Figure(figsize=(15, 4 if panels is SFT_PANELS else 8))  # no pyplot: no global state, no GUI
    axes = fig.subplots(1 if panels is SFT_PANELS else 2, 3, squeeze=False)
    for label, records in runs:
        for ax, (x_key, y_key, title) in zip(axes.flat, panels):
            pts = [(r[x_key], r[y_key]) for r in records if x_key in r and isinstance(r.get(y_key), (int, float))]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", ms=3, label=label)
            ax.set_title(title)
            ax.set_xlabel(x_key)
            ax.grid(alpha=0.3)
    drawn = [ax for ax in axes.flat if ax.lines]
    if drawn:
        drawn[0].legend()
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.08, top=0.93, wspace=0.22, hspace=0.35)
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=80)
    return out.getvalue()
