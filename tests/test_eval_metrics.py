"""The evaluation metrics (unbiased pass@k, the official majority vote) and the graders' extracted
answers, against brute-force enumeration, hand counts and the official `evaluate_predictions`
(tests/data/official_eval_votes.jsonl, see tests/data/README.md)."""
import collections
import itertools
import json
import pathlib
from fractions import Fraction

import numpy as np
import pytest

from vinejax.tasks import GRADERS, arithmetic, get_task, gsm8k
from vinejax.tasks import math as math_task
from vinejax.tasks.base import Problem
from vinejax.train.eval_metrics import majority_index, majority_vote, pass_at_k, pass_ks, summarize

DATA = pathlib.Path(__file__).parent / "data"


def brute_pass_at_k(verdicts, k):
    """Fraction of the k-subsets of the samples holding a correct one (exact)."""
    subsets = list(itertools.combinations(verdicts, k))
    return Fraction(sum(any(s) for s in subsets), len(subsets))


def test_pass_at_k_equals_the_enumeration_of_all_subsets():
    for n in range(1, 9):
        for c in range(n + 1):
            verdicts = [1] * c + [0] * (n - c)
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(float(brute_pass_at_k(verdicts, k)), abs=1e-12), (n, c, k)


def test_pass_at_k_hand_values_and_limits():
    assert pass_at_k(4, 1, 1) == 0.25
    assert pass_at_k(4, 1, 2) == 0.5  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(16, 2, 8) == pytest.approx(1 - (8 * 7) / (16 * 15))  # C(14,8)/C(16,8) = 8*7/(16*15)
    assert pass_at_k(16, 0, 16) == 0.0 and pass_at_k(16, 1, 16) == 1.0
    for bad in ((4, 1, 5), (4, 1, 0), (4, 5, 1)):
        with pytest.raises(ValueError):
            pass_at_k(*bad)
    assert pass_ks(16) == (1, 4, 8, 16) and pass_ks(4) == (1, 4) and pass_ks(6) == (1, 4, 6) and pass_ks(1) == (1,)


def official_vote_index(answers):
    """The official rule, as VinePPO's evaluate_predictions writes it."""
    winner, _ = collections.Counter(answers).most_common(n=1)[0]
    return answers.index(winner)


def test_majority_index_ties_go_to_the_first_seen_answer_and_none_is_a_candidate():
    assert majority_index(["b", "a", "a", "b"]) == 0
    assert majority_index(["a", "b", "b"]) == 1
    assert majority_index([None, "5", None]) == 0
    assert majority_index([("1", "2"), ("2",), ("1", "2")]) == 0
    assert majority_vote(["7", "5", "5", None], [1, 0, 0, 0]) == 0.0
    assert majority_vote(["7", "5", "7", None], [1, 0, 1, 0]) == 1.0
    rng = np.random.default_rng(0)
    for _ in range(500):
        answers = [[None, "1", "2", ("3",)][i] for i in rng.integers(0, 4, rng.integers(1, 10))]
        assert majority_index(answers) == official_vote_index(answers), answers


def test_summarize_matches_a_hand_count():
    verdicts = np.array([[1, 0, 0, 1], [0, 0, 0, 0]], np.float32)
    answers = [["4", "5", "5", "4"], [None, "9", None, "8"]]
    lengths = np.array([[10, 20, 30, 40], [5, 5, 5, 5]])
    finished = np.array([[True, True, False, True], [True] * 4])
    m = summarize(verdicts, answers, lengths, finished)
    assert m["accuracy"] == 2 / 8
    assert m["pass@1"] == pytest.approx((2 / 4 + 0) / 2)
    assert m["pass@4"] == 0.5
    assert m["maj@4"] == 0.5  # "4" and "5" tie, "4" is seen first and right; None wins problem 2
    assert m["no_answer_frac"] == pytest.approx((0 + 2 / 4) / 2)
    assert m["unique_answers"] == 2.5
    assert m["length_mean"] == 15.0 and m["unfinished_frac"] == 1 / 8


def _official_groups():
    with open(DATA / "official_eval_votes.jsonl", encoding="utf-8") as f:
        groups = [json.loads(line) for line in f]
    records = {}
    for name, to_problem in (("gsm8k", gsm8k.to_problem), ("math", math_task.to_problem)):
        with open(DATA / f"official_rewards_{name}.jsonl", encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                records[name, r["id"]] = (to_problem({k: v for k, v in r.items() if k not in ("id", "cases")}),
                                          r["cases"])
    return groups, records


@pytest.mark.parametrize("name", ["gsm8k", "math"])
def test_vineppo_answers_and_votes_match_the_official_evaluation(name):
    groups, records = _official_groups()
    task = get_task(name, grader="vineppo")
    groups = [g for g in groups if g["task"] == name]
    assert len(groups) == 60
    seen_tie = seen_none = False
    for g in groups:
        problem, cases = records[name, g["id"]]
        responses = [cases[i]["response"] for i in g["picks"]]
        answers = [task.answer(r, problem) for r in responses]
        official = [tuple(a) if isinstance(a, list) else a for a in g["answers"]]
        assert answers == official, g["id"]
        verdicts = np.array([g["correct"]], np.float32)  # the official verdicts: the vote logic is under test
        m = summarize(verdicts, [answers], np.zeros((1, 16)), np.ones((1, 16), bool))
        assert m["maj@16"] == g["majority_vote_acc"], g["id"]
        assert m["accuracy"] == pytest.approx(g["correct_frac"]) and m["pass@16"] == g["once_hit"]
        assert m["unique_answers"] == g["unique_answer_count"]
        assert m["no_answer_frac"] == pytest.approx(g["none_answer_extracted_frac_per_problem"])
        top = collections.Counter(answers).most_common()
        seen_tie |= len(top) > 1 and top[0][1] == top[1][1]
        seen_none |= None in answers
    assert seen_tie and (seen_none or name == "math")


def test_every_grader_has_an_answer_consistent_with_its_grade():
    cases = [
        ("gsm8k", "x\n#### 1,000", Problem("q", "1000", "s\n#### 1000")),
        ("gsm8k", "x\n#### 1000.00", Problem("q", "1000", "s\n#### 1000")),
        ("gsm8k", "no answer", Problem("q", "5", "s\n#### 5")),
        ("math", "so $\\boxed{\\dfrac{1}{2}}$", Problem("q", "\\frac{1}{2}", "$\\boxed{\\frac12}$")),
        ("math", "nothing here", Problem("q", "3", "$\\boxed{3}$")),
        ("arithmetic", "2+3=5\n#### 5", Problem("2+3", "5", "2+3=5\n#### 5")),
    ]
    expected = {  # task, grader -> the vote keys of the cases above
        ("gsm8k", "vineppo"): ["1,000", "1000.00", None], ("gsm8k", "strict"): ["1000", "1000", None],
        ("math", "vineppo"): [("\\frac{1}{2}",), ()], ("math", "strict"): ["\\frac{1}{2}", None],
        ("arithmetic", "strict"): ["5"], ("arithmetic", "vineppo"): ["5"],
    }
    for (name, grader), keys in expected.items():
        assert grader in GRADERS[name]
        task = get_task(name, grader=grader)
        mine = [(r, p) for n, r, p in cases if n == name]
        assert [task.answer(r, p) for r, p in mine] == keys, (name, grader)
        for (r, p), key in zip(mine, keys):
            if key is None:
                assert task.grade(r, p) == 0.0  # no answer is never right
    assert get_task("arithmetic").answer is arithmetic.answer
    assert get_task("gsm8k", grader="strict").answer("#### 12", None) == get_task("gsm8k", grader="strict").answer(
        "#### 12.0", None)
