"""Learning curves of several runs of one method, summarised for a comparison of methods.

A run's curve is its held-out evaluations (metrics.jsonl records with `eval/accuracy`) against
three clocks: optimizer steps (`train/gradient_steps`), training wall-clock and training CPU
seconds. Training time is the run's clock (`time/elapsed`, `time/cpu`: across resumes) minus
the time its held-out evaluations took (`time/eval`, `time/eval_cpu`, summed up to and including
that evaluation), so methods that evaluate at different cadences are timed alike.

Seeds of one method are aligned by evaluation index (each run of a method evaluates at the
same points, e.g. every 4 iterations), and the mean curve puts the mean accuracy at the mean x.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

CLOCKS = ("steps", "wall", "cpu")  # the x axes a curve is measured against


@dataclasses.dataclass(frozen=True)
class Curve:
    """One run's held-out evaluations, in the order they happened. All arrays are [E]."""

    accuracy: np.ndarray
    steps: np.ndarray  # optimizer steps taken before the evaluation
    wall: np.ndarray  # training wall-clock seconds before it (evaluations excluded)
    cpu: np.ndarray  # training CPU seconds before it (evaluations excluded)

    def clock(self, name: str) -> np.ndarray:
        if name not in CLOCKS:
            raise ValueError(f"unknown clock {name!r}; choose one of {', '.join(CLOCKS)}")
        return getattr(self, name)


def run_curve(records: Sequence[dict], max_steps: int | None = None) -> Curve:
    """The evaluations of one run's metrics records, up to `max_steps` optimizer steps (None = all).

    Records without `time/cpu` (older runs) get NaN CPU seconds.
    """
    rows, eval_wall, eval_cpu = [], 0.0, 0.0
    for r in records:
        if not isinstance(r.get("eval/accuracy"), (int, float)):
            continue
        eval_wall += r.get("time/eval", 0.0)
        eval_cpu += r.get("time/eval_cpu", 0.0)
        steps = int(r["train/gradient_steps"])
        if max_steps is not None and steps > max_steps:
            break
        rows.append((r["eval/accuracy"], steps, r["time/elapsed"] - eval_wall,
                     r.get("time/cpu", np.nan) - eval_cpu))
    if not rows:
        raise ValueError("no held-out evaluation (eval/accuracy with train/gradient_steps) in the records")
    acc, steps, wall, cpu = (np.asarray(c, np.float64) for c in zip(*rows))
    return Curve(acc, steps, wall, cpu)


@dataclasses.dataclass(frozen=True)
class MeanCurve:
    """Seeds of one method aligned by evaluation index: mean and std over seeds. Arrays are [E]."""

    accuracy: np.ndarray
    accuracy_std: np.ndarray
    steps: np.ndarray
    wall: np.ndarray
    cpu: np.ndarray
    num_runs: int

    def clock(self, name: str) -> np.ndarray:
        return Curve.clock(self, name)  # type: ignore[arg-type]


def mean_curve(curves: Sequence[Curve]) -> MeanCurve:
    """Mean (and std, ddof 0) over runs at each evaluation index, up to the shortest run."""
    if not curves:
        raise ValueError("mean_curve needs at least one run")
    n = min(len(c.accuracy) for c in curves)
    stack = lambda name: np.stack([getattr(c, name)[:n] for c in curves])  # [R, n]
    acc = stack("accuracy")
    return MeanCurve(acc.mean(0), acc.std(0), stack("steps").mean(0), stack("wall").mean(0),
                     stack("cpu").mean(0), len(curves))


def first_reaching(curve: MeanCurve, threshold: float) -> int | None:
    """Index of the first evaluation whose mean accuracy is >= threshold (up to float rounding), or None."""
    hits = np.flatnonzero(curve.accuracy >= threshold - 1e-9)
    return int(hits[0]) if hits.size else None


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for one value)."""
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def summarize(curves: dict[str, list[Curve]], reference: str) -> dict:
    """Per method: peak and final accuracy over seeds (mean, std, values), and the steps,
    training wall-clock and CPU seconds at which its mean curve first reaches the peak of the
    `reference` method's mean curve (None = never)."""
    if reference not in curves:
        raise ValueError(f"reference method {reference!r} has no runs; have {', '.join(curves) or 'none'}")
    means = {name: mean_curve(runs) for name, runs in curves.items()}
    target = float(means[reference].accuracy.max())
    out = {"reference": reference, "target": target, "methods": {}}
    for name, runs in curves.items():
        peaks = [float(c.accuracy.max()) for c in runs]
        finals = [float(c.accuracy[-1]) for c in runs]
        hit = first_reaching(means[name], target)
        out["methods"][name] = {
            "runs": len(runs),
            "peak": dict(zip(("mean", "std"), mean_std(peaks))) | {"values": peaks},
            "final": dict(zip(("mean", "std"), mean_std(finals))) | {"values": finals},
            "final_steps": float(means[name].steps[-1]),
            "reach": None if hit is None else {clock: float(means[name].clock(clock)[hit]) for clock in CLOCKS},
        }
    return out
