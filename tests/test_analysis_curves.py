"""Learning-curve summaries of a method comparison (vinejax.analysis.curves), on hand-made
metrics records whose answers are worked out by hand; and the run clock they read."""
import time

import numpy as np
import pytest

from vinejax.analysis import curves
from vinejax.train.metrics import RunClock


def ev(steps, acc, elapsed, cpu, eval_wall=2.0, eval_cpu=3.0, **extra):
    return {"train/gradient_steps": steps, "eval/accuracy": acc, "time/elapsed": elapsed, "time/cpu": cpu,
            "time/eval": eval_wall, "time/eval_cpu": eval_cpu} | extra


RECORDS = [
    ev(0, 0.40, elapsed=5.0, cpu=8.0),
    {"train/gradient_steps": 8, "rewards/mean": 0.5, "time/elapsed": 9.0, "time/cpu": 15.0},  # no eval
    {"select/accuracy": 0.9, "train/gradient_steps": 12, "time/elapsed": 11.0},  # RestEM selection: training
    ev(16, 0.55, elapsed=20.0, cpu=30.0),
    ev(32, 0.50, elapsed=40.0, cpu=50.0, eval_wall=4.0, eval_cpu=6.0),
]


def test_run_curve_subtracts_the_evaluations_so_far_from_both_clocks():
    c = curves.run_curve(RECORDS)
    np.testing.assert_array_equal(c.accuracy, [0.40, 0.55, 0.50])
    np.testing.assert_array_equal(c.steps, [0, 16, 32])
    np.testing.assert_allclose(c.wall, [5 - 2, 20 - 4, 40 - 8])
    np.testing.assert_allclose(c.cpu, [8 - 3, 30 - 6, 50 - 12])


def test_run_curve_stops_at_the_step_budget():
    c = curves.run_curve(RECORDS, max_steps=20)
    np.testing.assert_array_equal(c.steps, [0, 16])
    with pytest.raises(ValueError, match="no held-out evaluation"):
        curves.run_curve(RECORDS[1:3])


def curve(acc, steps=None, wall=None, cpu=None):
    acc = np.asarray(acc, float)
    steps = np.arange(len(acc)) * 16.0 if steps is None else np.asarray(steps, float)
    return curves.Curve(acc, steps, steps * 2 if wall is None else np.asarray(wall, float),
                        steps * 3 if cpu is None else np.asarray(cpu, float))


def test_mean_curve_aligns_seeds_by_evaluation_index_up_to_the_shortest():
    m = curves.mean_curve([curve([0.4, 0.6, 0.7], wall=[0, 10, 30]), curve([0.4, 0.5], wall=[0, 20])])
    np.testing.assert_allclose(m.accuracy, [0.4, 0.55])
    np.testing.assert_allclose(m.accuracy_std, [0.0, 0.05])
    np.testing.assert_allclose(m.wall, [0, 15])
    assert m.num_runs == 2


def test_summarize_races_to_the_peak_of_the_reference_mean_curve():
    runs = {
        # reference: mean curve 0.40, 0.50, 0.60, 0.55 -> target 0.60 (its own mean of peaks is 0.625)
        "ppo": [curve([0.40, 0.50, 0.65, 0.55]), curve([0.40, 0.50, 0.55, 0.55])],
        "vineppo": [curve([0.40, 0.62, 0.70, 0.72], wall=[0, 50, 100, 150]),
                    curve([0.40, 0.58, 0.66, 0.70], wall=[0, 70, 120, 170])],
        "restem": [curve([0.40, 0.45, 0.52], steps=[0, 40, 80])],
    }
    s = curves.summarize(runs, "ppo")
    assert s["target"] == pytest.approx(0.60)
    ppo, vine, restem = (s["methods"][k] for k in ("ppo", "vineppo", "restem"))
    assert ppo["reach"] == {"steps": 32.0, "wall": 64.0, "cpu": 96.0}
    assert vine["reach"] == {"steps": 16.0, "wall": 60.0, "cpu": 48.0}  # mean 0.60 at index 1
    assert restem["reach"] is None
    assert vine["peak"]["mean"] == pytest.approx(0.71) and vine["peak"]["std"] == pytest.approx(np.std([0.72, 0.70], ddof=1))
    assert vine["final"]["values"] == [0.72, 0.70]
    assert ppo["peak"]["mean"] == pytest.approx(0.60) and restem["peak"]["std"] == 0.0
    assert restem["final_steps"] == 80.0
    with pytest.raises(ValueError, match="reference method 'grpo'"):
        curves.summarize(runs, "grpo")


def test_run_clock_continues_from_a_checkpoint_and_counts_cpu_not_sleep():
    clock = RunClock({"elapsed": 100.0, "cpu": 40.0})
    start = clock.as_metrics()
    assert 100.0 <= start["time/elapsed"] < 101.0 and 40.0 <= start["time/cpu"] < 41.0
    time.sleep(0.3)
    slept = clock.as_metrics()
    assert slept["time/elapsed"] - start["time/elapsed"] >= 0.3
    assert slept["time/cpu"] - start["time/cpu"] < 0.1  # sleeping uses no CPU
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    assert clock.cpu() - slept["time/cpu"] >= 0.3
    resumed = RunClock(clock.as_meta())
    assert resumed.elapsed() >= clock.as_meta()["elapsed"] - 1e-3
