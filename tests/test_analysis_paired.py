"""Paired seed differences, steps to a threshold and the collapse report (vinejax.analysis.paired)."""
import numpy as np
import pytest

from vinejax.analysis.curves import Curve
from vinejax.analysis.paired import collapse_report, paired_differences, steps_to_threshold, t_interval


def curve(acc, steps=None):
    acc = np.asarray(acc, np.float64)
    steps = np.arange(len(acc)) * 32.0 if steps is None else np.asarray(steps, np.float64)
    return Curve(acc, steps, steps * 2.0, steps * 3.0)


def test_t_interval_matches_the_textbook_quantile():
    d = [0.05, 0.02, -0.01, 0.04, 0.03]
    mean, low, high = t_interval(d)
    half = 2.7764451051977987 * np.std(d, ddof=1) / np.sqrt(5)  # t_{0.975, 4}
    assert mean == pytest.approx(0.026) and low == pytest.approx(0.026 - half) and high == pytest.approx(0.026 + half)
    assert np.isnan(t_interval([0.1])[1])


def test_t_interval_covers_at_its_level_on_normal_differences():
    rng = np.random.default_rng(0)
    covered = [lo <= 0.3 <= hi for lo, hi in (t_interval(rng.normal(0.3, 1.0, 5))[1:] for _ in range(4000))]
    assert np.mean(covered) == pytest.approx(0.95, abs=0.012)


def test_paired_differences_per_evaluation_over_shared_seeds():
    a = {0: curve([0.4, 0.7, 0.8]), 1: curve([0.5, 0.6, 0.9]), 2: curve([0.4, 0.6, 0.7]), 7: curve([0.1, 0.1, 0.1])}
    b = {0: curve([0.4, 0.5, 0.7]), 1: curve([0.5, 0.6, 0.8]), 2: curve([0.4, 0.5])}  # seed 2 shorter, 7 unpaired
    rows = paired_differences(a, b)
    assert [r.steps for r in rows] == [0.0, 32.0] and all(r.seeds == 3 for r in rows)
    assert rows[1].values == pytest.approx((0.2, 0.0, 0.1)) and rows[1].mean == pytest.approx(0.1)
    assert (rows[1].low, rows[1].high) == pytest.approx(t_interval([0.2, 0.0, 0.1])[1:])
    with pytest.raises(ValueError, match="different steps"):
        paired_differences({0: curve([0.1, 0.2])}, {0: curve([0.1, 0.2], steps=[0, 16])})
    with pytest.raises(ValueError, match="no seed"):
        paired_differences({0: curve([0.1])}, {1: curve([0.1])})


def test_steps_to_threshold():
    c = curve([0.4, 0.69, 0.7, 0.65])
    assert steps_to_threshold(c, 0.7) == 64.0 and steps_to_threshold(c, 0.71) is None


def test_collapse_report_reads_reward_kl_and_the_guards():
    records = [{"eval/accuracy": 0.4}]  # evaluation lines are ignored
    for i, (reward, kl, skipped, nonfinite) in enumerate([(0.5, 0.1, 0, 0), (0.6, 0.5, 0, 0), (0.2, 3.5, 0.25, 0),
                                                         (0.18, 3.0, 0.5, 0.125), (0.3, 1.0, 0, 0)]):
        records.append({"rewards/mean": reward, "kl": kl, "ratio": 1.0 + i / 10, "pg_clipfrac": i / 100,
                        "skipped": skipped, "nonfinite": nonfinite})
    r = collapse_report(records)
    assert r.collapsed and r.start_reward == 0.5 and r.min_reward == 0.18 and r.min_reward_iteration == 3
    assert (r.max_kl, r.max_kl_iteration, r.ratio_at_max_kl, r.clipfrac_at_max_kl) == (3.5, 2, 1.2, 0.02)
    assert r.max_ratio == pytest.approx(1.4) and r.ratio_rule_iterations == 2 and r.nonfinite_iterations == 1
    assert "reward 0.50 -> 0.18 at iteration 3;" in r.reason and "KL 3.50" in r.reason and r.end_reward == 0.3
    dip = collapse_report(records + [{"rewards/mean": 0.55, "kl": 1.0}])
    assert dip.collapsed and "reward 0.50 -> 0.18 at iteration 3, back to 0.55 by the end" in dip.reason
    assert collapse_report(records, kl_bound=3.2).reason.endswith("; KL 3.50 nats at iteration 2")
    far = [{"rewards/mean": 0.5, "kl": 0.2}, {"rewards/mean": 0.4, "kl": 6.0}]  # KL alone is no collapse by default
    assert not collapse_report(far).collapsed and collapse_report(far, kl_bound=5.0).collapsed
    calm = collapse_report([{"rewards/mean": 0.5, "kl": 0.2}, {"rewards/mean": 0.7, "kl": 0.4}])
    assert not calm.collapsed and calm.reason == "" and calm.ratio_rule_iterations == 0
    with pytest.raises(ValueError, match="no training records"):
        collapse_report([{"eval/accuracy": 0.5}])
