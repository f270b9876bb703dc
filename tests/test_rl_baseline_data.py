"""RestEM / DPO+ training-set builders vs the official generators' selections and hand cases."""
import json
import pathlib

import numpy as np
import pytest

from vinejax.rl.baseline_data import dpo_positive_pairs, restem_select

OFFICIAL = pathlib.Path(__file__).parent / "data" / "official_restem_dpo_selection.jsonl"


def official_cases():
    with open(OFFICIAL) as f:
        return [json.loads(line) for line in f]


class NoDraws:
    """An rng that fails the test if a draw is made."""

    def choice(self, *a, **k):
        raise AssertionError("rng used although no problem exceeds the cap")


@pytest.mark.parametrize("case", range(6))
def test_restem_matches_official(case):
    rec = official_cases()[case]
    for cap in (10, 3, -1):
        got = restem_select(np.float32(rec["rewards"]), np.int32(rec["problem_index"]), cap)
        assert got.tolist() == rec[f"restem_cap{cap}"], cap
    assert len(rec["restem_cap3"]) < len(rec["restem_cap10"]) or case < 1   # the cap binds


@pytest.mark.parametrize("case", range(6))
def test_dpo_pairs_match_official_draws(case):
    rec = official_cases()[case]
    rewards, probs = np.float32(rec["rewards"]), np.int32(rec["problem_index"])
    keys = [k for k in rec if k.startswith("dpo_cap")]
    assert len(keys) >= 3
    for key in keys:
        cap, seed = (int(x) for x in key[len("dpo_cap"):].split("_seed"))
        got = dpo_positive_pairs(rewards, probs, np.random.RandomState(seed), cap)
        assert got.tolist() == rec[key], key


def test_restem_hand_cases():
    r = np.array([1, 0, 1, 1, 1, 0.999, 1], np.float32)
    p = np.array([0, 0, 0, 0, 1, 1, 1])
    assert restem_select(r, p, 2).tolist() == [0, 2, 4, 6]           # first 2 correct of problem 0
    assert restem_select(r, p, -1).tolist() == [0, 2, 3, 4, 6]       # 0.999 < 1.0 is not correct
    assert restem_select(r, p, 1, threshold=0.5).tolist() == [0, 4]
    # interleaved rows: grouped by problem in order of first row, row order within a problem
    assert restem_select([1, 1, 1, 1, 1], [7, 3, 7, 3, 7], 2).tolist() == [0, 2, 1, 3]
    assert restem_select([0.0, 0.0], [0, 1]).shape == (0,)


def test_dpo_pairs_hand_cases():
    r = np.array([1, 0, 0, 1, 1, 0, 1, 1, 0.4, 0.5], np.float32)
    p = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    # problem 1 all correct, problem 3 only correct (0.5 >= threshold): skipped
    want = [[0, 1], [0, 2], [6, 5], [6, 8], [7, 5], [7, 8]]
    assert dpo_positive_pairs(r, p, NoDraws(), 64).tolist() == want
    assert dpo_positive_pairs(r, p, NoDraws(), -1).tolist() == want
    assert dpo_positive_pairs(r, p, NoDraws(), 4).tolist() == want   # cap == count: no draw
    assert dpo_positive_pairs([1.0, 1.0], [0, 0], NoDraws()).shape == (0, 2)


def test_dpo_cap_draws_a_uniform_subset():
    r = np.array([0, 1, 1, 0], np.float32)
    cands = {(1, 0), (1, 3), (2, 0), (2, 3)}
    counts = dict.fromkeys(cands, 0)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        got = [tuple(x) for x in dpo_positive_pairs(r, [5, 5, 5, 5], rng, 3).tolist()]
        assert len(got) == 3 and len(set(got)) == 3 and set(got) <= cands
        for c in got:
            counts[c] += 1
    for c, n in counts.items():
        assert abs(n / 2000 - 0.75) < 0.04, (c, n)


@pytest.mark.parametrize("fn,cap_name", [(restem_select, "max_per_problem"),
                                          (dpo_positive_pairs, "max_pairs_per_problem")])
def test_bad_inputs_name_the_culprit(fn, cap_name):
    extra = (np.random.default_rng(0),) if fn is dpo_positive_pairs else ()
    with pytest.raises(ValueError, match="equal length"):
        fn([1.0, 0.0], [0], *extra)
    with pytest.raises(ValueError, match="row 1 is nan"):
        fn([1.0, np.nan], [0, 0], *extra)
    with pytest.raises(ValueError, match="integers"):
        fn([1.0, 0.0], [0.0, 1.0], *extra)
    with pytest.raises(ValueError, match=cap_name):
        fn([1.0, 0.0], [0, 0], *extra, 0)
