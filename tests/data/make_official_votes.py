"""Make tests/data/official_eval_votes.jsonl (see tests/data/README.md).

Runs the official evaluation analysis in the scratch harness of ``make_official_data.py`` (its
``official_reward`` module builds the official ``GSM8K`` / ``MATH`` tasks), outside the project:

    cd SCRATCH/harness && SCRATCH/venv/bin/python REPO/tests/data/make_official_votes.py REPO/tests/data OUT.jsonl \
        --harness SCRATCH/harness

For the first 60 problems of ``official_rewards_{gsm8k,math}.jsonl`` it draws 16 responses (seeded,
with repeats, from a random pool of 2-6 of the problem's cases) and records the official extracted
answers, grading results and ``evaluate_predictions`` metrics of that group.
"""
import argparse
import json
import random
import sys


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--harness", required=True)
    args = parser.parse_args()
    sys.path.insert(0, args.harness)
    import official_reward as harness

    rows = []
    for name, task in (("gsm8k", harness.gsm8k_task), ("math", harness.math_task)):
        with open(f"{args.data}/official_rewards_{name}.jsonl") as f:
            records = [json.loads(line) for line in f]
        rng = random.Random(f"votes/{name}")
        for rec in records[:60]:
            cases = rec["cases"]
            pool = rng.sample(range(len(cases)), min(len(cases), rng.choice([2, 3, 4, 6])))
            picks = [rng.choice(pool) for _ in range(16)]
            responses = [cases[i]["response"] for i in picks]
            if name == "gsm8k":
                ref, kwargs = harness.gsm8k_instance(rec), {}
            else:  # the Minerva path reads the gold answers from the solution
                ref, kwargs = {"problem": rec["problem"], "solution": rec["solution"], "answer": None}, {
                    "problem": rec["problem"]}
            answers = [task.extract_predicted_answer_from_text(r, **kwargs) for r in responses]
            correct = [bool(task.grade_answer(given_answer=a, ground_truth=ref["answer"], item=ref)) for a in answers]
            m = task.evaluate_predictions(predictions=[responses], references=[ref])
            rows.append({"task": name, "id": rec["id"], "picks": picks, "answers": answers, "correct": correct,
                         "correct_frac": m["correct_frac"], "once_hit": m["once_hit"],
                         "majority_vote_acc": float(m["majority_vote_acc"]),
                         "unique_answer_count": m["unique_answer_count"],
                         "none_answer_extracted_frac_per_problem": m["none_answer_extracted_frac_per_problem"]})
    with open(args.out, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
