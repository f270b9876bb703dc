"""The "vineppo" graders agree with VinePPO's official reward (outputs committed as data).

tests/data/official_rewards_{math,gsm8k}.jsonl hold realistic (response, gold solution) pairs
made from the real data (gold solutions, equivalent rewrites, wrong and malformed answers,
hand-picked quirks) with the reward that the official ``MATHRewardFunction`` gave each one
(see tests/data/README.md).
"""
import collections
import json
import pathlib

import pytest

from vinejax.tasks import get_task, gsm8k
from vinejax.tasks import math as math_task

DATA = pathlib.Path(__file__).parent / "data"
MIN_AGREEMENT = 0.99


def _cases(name):
    with open(DATA / f"official_rewards_{name}.jsonl", encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    to_problem = math_task.to_problem if name == "math" else gsm8k.to_problem
    cases = []
    for record in records:
        problem = to_problem({k: v for k, v in record.items() if k not in ("id", "cases")})
        cases += [(record["id"], case["kind"], case["response"], problem, case["reward"]) for case in record["cases"]]
    return cases


def _disagreements(name, grader):
    cases = _cases(name)
    task = get_task(name, grader=grader)
    rewards = task.grade_batch([c[2] for c in cases], [c[3] for c in cases], num_workers=2)
    return cases, [(c[0], c[1], c[2][-100:], c[4], float(r)) for c, r in zip(cases, rewards) if float(r) != c[4]]


@pytest.mark.parametrize("name", ["math", "gsm8k"])
def test_vineppo_grader_agrees_with_the_official_reward(name):
    cases, disagreements = _disagreements(name, "vineppo")
    assert len(cases) > 800
    agreement = 1 - len(disagreements) / len(cases)
    listing = "\n".join(f"{i} [{kind}] official={want} ours={got}: {text!r}" for i, kind, text, want, got in disagreements)
    assert agreement >= MIN_AGREEMENT, f"agreement {agreement:.4f}; disagreements:\n{listing}"


def test_the_data_covers_the_realistic_kinds_with_both_verdicts():
    kinds = collections.defaultdict(set)
    for _, kind, _, _, reward in _cases("math") + _cases("gsm8k"):
        kinds[kind.split(":")[0]].add(reward)
    for kind in ("gold_solution", "boxed_gold", "rewrite", "wrong", "malformed", "several_boxes",
                 "minerva", "answer_is", "handpicked", "commas_removed", "dollar", "trailing_zeros"):
        assert kind in kinds, kind
    assert kinds["rewrite"] == {0.0, 1.0} and kinds["handpicked"] == {0.0, 1.0} and kinds["wrong"] == {0.0, 1.0}


def test_gsm8k_gold_with_thousands_separator_is_never_earned_officially():
    """Official quirk: commas are removed from the prediction only, so e.g. gold "1,000" can't match."""
    comma_cases = [c for c in _cases("gsm8k") if "," in c[3].answer]
    assert len({c[0] for c in comma_cases}) == 14  # the 14 GSM8K test problems with such a gold
    responses, problems = [c[2] for c in comma_cases], [c[3] for c in comma_cases]
    assert [c[4] for c in comma_cases] == [0.0] * len(comma_cases)
    assert get_task("gsm8k", grader="vineppo").grade_batch(responses, problems).tolist() == [0.0] * len(comma_cases)
    strict = get_task("gsm8k", grader="strict").grade_batch(responses, problems)
    kinds = [c[1] for c in comma_cases]
    assert all(r == 1.0 for r, k in zip(strict, kinds) if k in ("commas_removed", "gold_solution_raw"))
