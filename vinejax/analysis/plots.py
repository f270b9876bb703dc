"""PNG figures of a value-prediction report (`value_prediction.analyze`)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def value_scatter(report: dict, path: str) -> str:
    """One panel per value estimator: its prediction against the ground-truth value per state."""
    states = report["states"]
    names = list(report["values"]["estimators"])
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.8), squeeze=False)
    gt = np.asarray(states["gt"])
    for ax, name in zip(axes[0], names):
        m = report["values"]["estimators"][name]
        ax.scatter(gt, states[name], s=8, alpha=0.5)
        lo = min(0.0, float(np.min(states[name])))
        hi = max(1.0, float(np.max(states[name])))
        ax.plot([lo, hi], [lo, hi], color="gray", lw=1, ls="--")
        r = m["pearson"]["value"]
        ax.set_title(f"{name}\nMAE {m['mae']['value']:.3f}, r {'n/a' if r is None else f'{r:.2f}'}", fontsize=10)
        ax.set_xlabel(f"ground truth V (K={report['settings']['gt_rollouts']})")
        ax.set_ylabel("prediction")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def ranking_bars(report: dict, path: str) -> str:
    """Pairwise and top-1 ranking accuracy per estimator with their confidence intervals, and the
    chance and ceiling levels the ground-truth ties allow."""
    rk = report["ranking"]
    fig, ax = plt.subplots(figsize=(8, 5))
    estimators = rk.get("estimators", {})
    names = list(estimators)
    x = np.arange(len(names))
    metrics = ("pairwise", "pairwise_untied", "top1")
    for i, metric in enumerate(metrics):
        vals = np.array([estimators[n][metric]["value"] for n in names], float)
        cis = np.array([estimators[n][metric]["ci"] for n in names], float).reshape(-1, 2)
        err = np.nan_to_num(np.abs(np.stack([vals - cis[:, 0], cis[:, 1] - vals]))) if len(names) else None
        ax.bar(x + (i - 1) * 0.27, vals, width=0.27, yerr=err, capsize=3, label=metric, color=f"C{i}")
    if "ceilings" in rk:
        c = rk["ceilings"]
        ax.axhline(c["chance_pairwise"], color="C0", ls=":", lw=1, label="pairwise chance")
        ax.axhline(c["untied_pairs"], color="C0", ls="--", lw=1, label="pairwise ceiling (gt ties)")
        ax.axhline(0.5, color="C1", ls=":", lw=1, label="untied-pair chance")
        ax.axhline(c["chance_top1"], color="C2", ls=":", lw=1, label="top-1 chance")
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title(f"ranking of next steps ({rk.get('num_states', 0)} states; pairwise: ties count wrong)")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
