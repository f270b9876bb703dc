"""Grading throughput on MATH500 gold solutions: responses graded per second, per grader.

Run: ``python benchmarks/grading.py [--repeats 5] [--workers 2]``. Prints the median over the
repeats, for each grader ("vineppo", "strict"), of (a) ``grade`` one call at a time, (b)
``grade_batch`` with the symbolic worker pool, on the gold solutions (fast paths) and on
shuffled pairs (which send many pairs to sympy), plus GSM8K test for reference. Skips cleanly
without ../shared/data.
"""
from __future__ import annotations

import argparse
import pathlib
import random
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"


def _rate(function, count: int, repeats: int) -> float:
    from vinejax.tasks import math_grade_strict, math_grade_vineppo

    times = []
    for _ in range(repeats):
        math_grade_strict.clear_cache()  # cold: no symbolic verdict reused between repeats
        math_grade_vineppo.clear_cache()
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return count / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if not (DATA / "math" / "test.jsonl").is_file():
        print(f"skipped: real data not found at {DATA}")
        return
    from vinejax.tasks import get_task, symbolic

    symbolic.get_pool(1).check_many([("x", "x")])  # start workers outside the timed sections
    symbolic.get_pool(args.workers).check_many([("x", "x")] * args.workers)
    rows = []
    for grader in ("vineppo", "strict"):
        math_task = get_task("math", grader=grader, data_dir=str(DATA))
        problems = math_task.load_split("test")
        responses = [p.solution for p in problems]
        order = list(range(len(problems)))
        random.Random(0).shuffle(order)
        shuffled = [problems[i] for i in order]
        n = len(problems)
        rows += [
            (f"[{grader}] MATH500 gold, grade() one by one",
             _rate(lambda: [math_task.grade(r, p) for r, p in zip(responses, problems)], n, args.repeats)),
            (f"[{grader}] MATH500 gold, grade_batch(num_workers={args.workers})",
             _rate(lambda: math_task.grade_batch(responses, problems, num_workers=args.workers), n, args.repeats)),
            (f"[{grader}] MATH500 shuffled pairs, grade() one by one",
             _rate(lambda: [math_task.grade(r, p) for r, p in zip(responses, shuffled)], n, args.repeats)),
            (f"[{grader}] MATH500 shuffled pairs, grade_batch(num_workers={args.workers})",
             _rate(lambda: math_task.grade_batch(responses, shuffled, num_workers=args.workers), n, args.repeats)),
        ]
        gsm8k = get_task("gsm8k", grader=grader, data_dir=str(DATA))
        gsm = gsm8k.load_split("test")
        rows.append((f"[{grader}] GSM8K test gold, grade_batch",
                     _rate(lambda: gsm8k.grade_batch([p.solution for p in gsm], gsm), len(gsm), args.repeats)))
    print(f"median over {args.repeats} repeats (responses graded per second):")
    for label, rate in rows:
        print(f"  {label:<65s} {rate:>12,.0f}/s")


if __name__ == "__main__":
    main()
