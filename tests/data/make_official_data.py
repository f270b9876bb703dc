"""Make the official-reward test data in tests/data (see tests/data/README.md).

Three steps; the official code runs only in a scratch directory and venv outside the project:

1. ``python tests/data/make_official_data.py setup SCRATCH --official /path/to/VinePPO``
   copies the official grading modules (src/treetune/tasks/{base_task,gsm8k,math,
   math_answer_exctraction,math_grader,math_grader_minerva,math_normalize}.py and
   episode_generators/math_episode_generator.py) into SCRATCH with stubs for the unrelated
   imports; then make a venv for it:
   ``python3 -m venv SCRATCH/venv && SCRATCH/venv/bin/pip install sympy==1.12 mpmath==1.3.0
   pylatexenc==2.10 regex==2023.12.25 numpy==1.26.4``.
2. ``python tests/data/make_official_data.py pairs PAIRS.jsonl --data ../shared/data`` writes the
   realistic (response, gold) pairs (seeded; plain Python).
3. ``SCRATCH/venv/bin/python tests/data/make_official_data.py verdicts PAIRS.jsonl tests/data
   --scratch SCRATCH`` runs the official ``MATHRewardFunction`` (configured as
   polIter_rho1bSft2_vineppo_{MATH,GSM8K}.jsonnet) on every pair and writes
   official_rewards_{math,gsm8k}.jsonl, plus official_symbolic_equal.jsonl (every call of the
   official symbolic check with its verdict, and the plain text its LaTeX converter made of
   each side).
"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import sys

LEADS = ["Let's work through it step by step.", "We compute the quantity directly.",
         "First we simplify the expression, then we evaluate it.", "Using the given facts, we find the result."]


def is_int(a):
    return re.fullmatch(r"-?\d+", a) is not None


def simple_frac(a):
    return re.fullmatch(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}", a)


def rewrites(a, problem, rng):
    """Equivalent (in intent) rewrites of gold answer a: list of (kind, text)."""
    out = []
    m = simple_frac(a)
    if m:
        sign, p, q = m.groups()
        out.append(("dfrac", a.replace("\\frac", "\\dfrac")))
        out.append(("slash", f"{sign}{p}/{q}"))
        v = (-1 if sign else 1) * int(p) / int(q)
        out.append(("decimal", f"{v:.4f}".rstrip("0")))
        out.append(("decimal_round2", f"{v:.2f}"))
        out.append(("frac_nobrace", f"{sign}\\frac{p}{q}" if len(p) == 1 and len(q) == 1 else f"{sign}\\frac{{{p}}}{{{q}}}"))
        if sign:
            out.append(("sign_inside", f"\\frac{{-{p}}}{{{q}}}"))
        out.append(("unreduced", f"{sign}\\frac{{{2*int(p)}}}{{{2*int(q)}}}"))
    if is_int(a):
        n = int(a)
        out.append(("trailing_zeros", f"{a}.00"))
        out.append(("trailing_zero", f"{a}.0"))
        if abs(n) >= 1000:
            out.append(("thousands", f"{n:,}"))
            out.append(("thousands_brace", f"{n:,}".replace(",", "{,}")))
        out.append(("unit_text", f"{a}\\text{{ cm}}"))
        out.append(("unit_mbox", f"{a} \\mbox{{ units}}"))
        out.append(("degrees", f"{a}^\\circ"))
        out.append(("degrees_brace", f"{a}^{{\\circ}}"))
        out.append(("percent", f"{a}\\%"))
        out.append(("dollar", f"\\${a}"))
        out.append(("x_eq", f"x = {a}"))
        out.append(("n_eq", f"n={a}"))
        out.append(("plus_sign", f"+{a}") if n >= 0 else ("paren_neg", f"({a})"))
        out.append(("spaced", f" {a} "))
        out.append(("words_after", f"{a} \\text{{ ways}}"))
    if re.fullmatch(r"-?\d+\.\d+", a):
        out.append(("decimal_trailing0", a + "0"))
        v = float(a)
        out.append(("decimal_as_frac", f"\\frac{{{int(round(v * 100))}}}{{100}}"))
        out.append(("percent_of_decimal", f"{v * 100:g}\\%"))
    if a.startswith("(") or a.startswith("[") or "\\left" in a:
        out.append(("left_right", "\\left" + a[0] + a[1:-1] + "\\right" + a[-1] if a[0] in "([" and a[-1] in ")]" else a))
        out.append(("spaces_after_commas", re.sub(r",\s*", ", ", a)))
        out.append(("no_spaces", a.replace(" ", "")))
        parts = a[1:-1].split(",")
        if len(parts) > 1:
            out.append(("reordered", a[0] + ",".join(reversed(parts)) + a[-1]))
    if "," in a and not a.startswith(("(", "[", "\\left", "\\{")):
        parts = [p.strip() for p in a.split(",")]
        out.append(("list_spaces", ", ".join(parts)))
        out.append(("list_reversed", ", ".join(reversed(parts))))
        out.append(("list_set", "\\{" + ", ".join(parts) + "\\}"))
        out.append(("list_drop_one", ", ".join(parts[:-1])))
        out.append(("list_and", " \\text{ and } ".join(parts)))
    if "\\sqrt" in a:
        out.append(("sqrt_nobrace", re.sub(r"\\sqrt\{(\d)\}", r"\\sqrt\1", a)))
        m2 = re.fullmatch(r"(\d+)\\sqrt\{(\d+)\}", a)
        if m2:
            k, r = map(int, m2.groups())
            out.append(("sqrt_merged", f"\\sqrt{{{k * k * r}}}"))
        m3 = re.fullmatch(r"\\sqrt\{(\d+)\}", a)
        if m3:
            out.append(("sqrt_decimal", f"{int(m3.group(1)) ** 0.5:.3f}"))
        out.append(("sqrt_dfrac", a.replace("\\frac", "\\dfrac")))
    if "\\pi" in a:
        out.append(("pi_cdot", a.replace("\\pi", "\\cdot \\pi")))
        m4 = re.fullmatch(r"(\d+)\\pi", a)
        if m4:
            out.append(("pi_reordered", f"\\pi \\cdot {m4.group(1)}"))
            out.append(("pi_decimal", f"{int(m4.group(1)) * 3.14159265:.2f}"))
    if re.fullmatch(r"[A-Za-z ]+|\\text\{[^{}]+\}", a):
        word = re.sub(r"\\text\{([^{}]+)\}", r"\1", a)
        out.append(("text_wrap", f"\\text{{{word}}}"))
        out.append(("lower", word.lower()))
        out.append(("textbf", f"\\textbf{{{word}}}"))
    if re.search(r"[a-z]\^", a) or re.search(r"\d[a-z]", a):
        out.append(("expr_spaces", re.sub(r"([+-])", r" \1 ", a)))
        out.append(("expr_times", re.sub(r"(\d)([a-z])", r"\1 \\cdot \2", a)))
    if "\\frac" in a and not simple_frac(a):
        out.append(("dfrac_general", a.replace("\\frac", "\\dfrac")))
    if "^\\circ" in a or "^{\\circ}" in a:
        out.append(("degrees_dropped", a.replace("^\\circ", "").replace("^{\\circ}", "")))
    if "\\%" in a:
        out.append(("percent_dropped", a.replace("\\%", "")))
    if "\\text{" in a and not re.fullmatch(r"\\text\{[^{}]+\}", a):
        out.append(("unit_dropped", re.sub(r"\\(?:text|mbox)\{[^{}]*\}", "", a).strip()))
    return out


def wrongs(a, other, rng):
    out = [("other_problem", other)]
    if is_int(a):
        n = int(a)
        out.append(("off_by_one", str(n + rng.choice([-1, 1]))))
        out.append(("doubled", str(2 * n)))
        if n != 0:
            out.append(("sign_flipped", str(-n)))
    m = simple_frac(a)
    if m:
        sign, p, q = m.groups()
        out.append(("inverted", f"{sign}\\frac{{{q}}}{{{p}}}"))
        out.append(("sign_flipped", f"\\frac{{{p}}}{{{q}}}" if sign else f"-\\frac{{{p}}}{{{q}}}"))
        out.append(("decimal_far", f"{int(p) / int(q) + 0.01:.4f}"))
    if re.fullmatch(r"-?\d+\.\d+", a):
        out.append(("decimal_off", f"{float(a) + 0.1:.3f}"))
    if "\\sqrt" in a:
        out.append(("sqrt_changed", re.sub(r"\\sqrt\{(\d+)\}", lambda m: f"\\sqrt{{{int(m.group(1)) + 1}}}", a)))
    if "\\pi" in a:
        out.append(("pi_dropped", a.replace("\\pi", "")))
    return out


def boxed_response(lead, ans, rng):
    style = rng.randrange(4)
    if style == 0:
        return f"{lead}\nTherefore, the answer is $\\boxed{{{ans}}}$."
    if style == 1:
        return f"{lead}\nSo we get $\\boxed{{{ans}}}$."
    if style == 2:
        return f"{lead} The result is\n$$\\boxed{{{ans}}}.$$"
    return f"{lead}\nThus our answer is $\\boxed{{{ans}}}$, as desired."


def math_cases(rec, other, rng):
    a, s, p = rec["answer"], rec["solution"], rec["problem"]
    lead = rng.choice(LEADS)
    cases = [("gold_solution", s), ("boxed_gold", boxed_response(lead, a, rng))]
    good = rewrites(a, p, rng)
    rng.shuffle(good)
    cases += [("rewrite:" + k, boxed_response(lead, t, rng)) for k, t in good[:4]]
    bad = wrongs(a, other, rng)
    rng.shuffle(bad)
    cases += [("wrong:" + k, boxed_response(lead, t, rng)) for k, t in bad[:2]]
    style = rng.randrange(9)
    if style == 0:
        cases.append(("minerva", f"{lead}\nFinal Answer: The final answer is ${a}$. I hope it is correct."))
    elif style == 1:
        cases.append(("answer_is", f"{lead}\nThe answer is {a}."))
    elif style == 2:
        cases.append(("malformed:empty_box", f"{lead}\nSo the answer is $\\boxed{{}}$."))
    elif style == 3:
        cases.append(("malformed:unclosed_box", f"{lead}\nSo the answer is $\\boxed{{{a}"))
    elif style == 4:
        cases.append(("malformed:no_answer", f"{lead}\nI could not finish this problem."))
    elif style == 5:
        cases.append(("several_boxes:wrong_then_right", f"{lead} First $\\boxed{{{other}}}$ was a guess.\nSo the answer is $\\boxed{{{a}}}$."))
    elif style == 6:
        cases.append(("several_boxes:right_then_wrong", f"{lead} We have $\\boxed{{{a}}}$, hence\n$\\boxed{{{other}}}$."))
    elif style == 7:
        cases.append(("truncated_solution", s[: len(s) // 2]))
    else:
        parts = [x.strip() for x in a.split(",")]
        boxes = " and ".join(f"$\\boxed{{{x}}}$" for x in parts)
        cases.append(("several_boxes:one_per_element", f"{lead}\nThe solutions are {boxes}."))
    return cases


def gsm8k_cases(rec, other_gold, rng):
    raw = rec["answer"]
    g = raw.split("####")[1].strip()
    lines = [l for l in re.sub(r"<<[^<>]*>>", "", raw).split("####")[0].split("\n") if l.strip()]
    body = lines[-1] if lines else ""
    n = float(g.replace(",", ""))
    cases = [rng.choice([("gold_solution_raw", raw), ("gold_solution_no_calculator", re.sub(r"<<[^<>]*>>", "", raw))])]
    opts = []
    plain = g.replace(",", "")
    if "," in g:
        opts.append(("commas_removed", f"{body}\n#### {plain}"))
    elif n >= 1000 and n == int(n):
        opts.append(("commas_added", f"{body}\n#### {int(n):,}"))
    opts += [("dollar", f"{body}\n#### ${g}"), ("trailing_zeros", f"{body}\n#### {g}.00"),
             ("units", f"{body}\n#### {g} dollars"), ("no_space", f"{body}\n####{g}"),
             ("trailing_period", f"{body}\n#### {g}."), ("spaces", f"{body}\n####   {g}  "),
             ("wrong:off_by_one", f"{body}\n#### {int(n) + 1 if n == int(n) else n + 1}"),
             ("wrong:other_problem", f"{body}\n#### {other_gold}"),
             ("malformed:no_marker", body), ("malformed:empty", f"{body}\n####"),
             ("malformed:two_markers_right_last", f"{body}\n#### {other_gold}\n#### {g}"),
             ("malformed:two_markers_right_first", f"{body}\n#### {g}\n#### {other_gold}"),
             ("negative", f"{body}\n#### -{g}"), ("percent", f"{body}\n#### {g}%")]
    rng.shuffle(opts)
    if "," in g:
        opts.sort(key=lambda kv: kv[0] != "commas_removed")
    return cases + opts[:4]


HANDPICKED = [  # (problem, gold answer or full solution, [responses]): official quirks and edge cases
    ("Simplify $\\frac{x+1}{2}$.", "\\frac{x+1}{2}", ["\\frac{x}{2}+\\frac{1}{2}", "\\frac{1}{2}(x+1)", "0.5x+0.5", "\\frac{x+1}{2}"]),
    ("What percent is it?", "50", ["0.5", "50\\%", "5000", "49.9995", "50.01"]),
    ("What fraction is it?", "0.1", ["10\\%", "\\frac{1}{10}", "1/10", "0.1000"]),
    ("Compute the value.", "3", ["3.0004", "3.002", "2.9999", "3.00", "\\frac{9}{3}"]),
    ("Compute $\\pi$.", "\\pi", ["3.14", "3.1416", "\\frac{22}{7}", "3.14159"]),
    ("Compute $\\sqrt{2}$.", "\\sqrt{2}", ["1.414", "1.41", "\\sqrt2", "2^{1/2}", "\\frac{2}{\\sqrt{2}}"]),
    ("Simplify $\\sqrt{12}$.", "2\\sqrt{3}", ["\\sqrt{12}", "2 \\sqrt 3", "3.464", "\\sqrt{3} \\cdot 2"]),
    ("Find the pair.", "(1,2)", ["(2,1)", "[1,2)", "(1, 2)", "\\left(1,2\\right)", "1,2"]),
    ("Find the interval.", "[2,5)", ["(2,5)", "[2,5]", "x \\in [2,5)", "[2, 5)"]),
    ("Find $x$.", "5", ["x=5", "x = 5", "y=5", "5=x", "abc=5"]),
    ("Find the line.", "y=2x+3", ["2x+3", "y = 3+2x", "-2x+y=3", "y=2x+4"]),
    ("Find all solutions, separated by commas.", "1,2,3", ["3,2,1", "1, 2", "1,2,3,4", "\\{1,2,3\\}"]),
    ("List the roots.", "$\\boxed{1}$ and $\\boxed{2}$", ["\\boxed{2} and \\boxed{1}", "\\boxed{1, 2}", "\\boxed{1}"]),
    ("How many?", "1,000", ["1000", "1{,}000", "1 000", "1_000", "10^3"]),
    ("Which base-7 number?", "12_7", ["12", "12_7", "127", "12_{7}"]),
    ("Simplify.", "-\\frac{1}{2}", ["\\frac{-1}{2}", "-0.5", "\\frac{1}{-2}", "-\\dfrac12", "\\tfrac{-1}{2}"]),
    ("Simplify.", "\\frac{\\sqrt{3}}{2}", ["\\frac{1}{2}\\sqrt{3}", "\\frac{\\sqrt3}{2}", "0.866", "\\sin 60^\\circ"]),
    ("Expand.", "x^2+2x+1", ["(x+1)^2", "x^{2}+2x+1", "(x+1)(x+1)", "x^2+2x"]),
    ("Compute.", "9^{9^{9}}", ["9^{9^{9}}", "9^{729}", "(9^9)^9"]),
    ("Which option?", "\\text{(C)}", ["C", "(C)", "\\text{C}", "\\textbf{(C)}", "(c)"]),
    ("Which day?", "\\text{Monday}", ["Monday", "monday", "\\text{Tuesday}", "\\mbox{Monday}"]),
    ("Find the angle.", "30^\\circ", ["30", "30^{\\circ}", "30 \\text{ degrees}", "\\frac{\\pi}{6}"]),
    ("Find the domain.", "(-\\infty,1)\\cup(2,\\infty)", ["(-\\infty, 1) \\cup (2, \\infty)", "(2,\\infty)\\cup(-\\infty,1)", "(-\\infty,1)"]),
    ("Compute the matrix.", "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", ["\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{bmatrix} 1 & 2 \\\\ 3 & 4 \\end{bmatrix}", "\\begin{pmatrix} 1 & 2 \\\\ 3 & 5 \\end{pmatrix}"]),
    ("Compute the complex number.", "2+3i", ["3i+2", "2+3j", "2 + 3 i", "2-3i"]),
    ("Compute the sum.", "\\$18.90", ["18.90", "18.9", "\\$18.9", "18.91"]),
    ("Compute the ratio.", "3:1", ["3", "3:1", "\\frac{3}{1}"]),
    ("An empty answer.", "", ["", " ", "0"]),
    ("Time?", "5:30 p.m.", ["5:30", "5:30 p.m.", "5:31"]),
    ("Evaluate.", "e^{2}", ["e^2", "\\exp(2)", "7.389"]),
    ("Evaluate.", "\\infty", ["\\infty", "inf", "infinity", "\\infty."]),
    ("Evaluate.", "\\frac{1}{3}", ["0.333", "0.33", "0.3333", ".333", "\\frac{2}{6}"]),
    ("Evaluate.", "10!", ["3628800", "10!", "10 \\cdot 9!"]),
    ("Evaluate.", "\\binom{5}{2}", ["10", "\\dbinom{5}{2}", "\\binom52"]),
]


def handpicked_cases():
    rows = []
    for n, (problem, gold, responses) in enumerate(HANDPICKED):
        solution = gold if "boxed" in gold else f"Working it out, the answer is $\\boxed{{{gold}}}$."
        cases = [("handpicked", f"So the answer is $\\boxed{{{r}}}$." if "boxed" not in r else r) for r in responses]
        rows.append((f"handpicked/{n}", problem, solution, cases))
    rows.append(("handpicked/no_box_gold", "Compute it.", "The answer is $\\boxed 5$.",
                 [("handpicked", "So it is $\\boxed 5$."), ("handpicked", "I give up."), ("handpicked", "It is 5."),
                  ("handpicked", "So the answer is $\\boxed{5}$.")]))
    rows.append(("handpicked/empty_box_gold", "Compute it.", "Hence $\\boxed{}$.",
                 [("handpicked", "So $\\boxed{}$."), ("handpicked", "Nothing."), ("handpicked", "So $\\boxed{0}$.")]))
    return rows



def make_pairs(data: str) -> list:
    def jsonl(path):
        with open(os.path.join(data, path), encoding="utf-8") as handle:
            return [json.loads(line) for line in handle]

    rng = random.Random(20240917)
    out = []
    math_test = jsonl("math/test.jsonl")
    math_val = jsonl("vineppo_splits/math_validation.jsonl")
    chosen = rng.sample(math_test, 120) + rng.sample(math_val, 80)
    pool_answers = [r["answer"] for r in math_test + math_val]
    for rec in chosen:
        other = rng.choice(pool_answers)
        while other == rec["answer"]:
            other = rng.choice(pool_answers)
        cases = math_cases(rec, other, rng)
        out.append({"task": "math", "id": rec["unique_id"], "problem": rec["problem"], "solution": rec["solution"],
                    "cases": [{"kind": k, "response": r} for k, r in cases]})
    for rid, problem, solution, cases in handpicked_cases():
        out.append({"task": "math", "id": rid, "problem": problem, "solution": solution,
                    "cases": [{"kind": k, "response": r} for k, r in cases]})
    gsm = jsonl("gsm8k/test.jsonl")
    comma = [i for i, r in enumerate(gsm) if "," in r["answer"].split("####")[1]]
    rest = [i for i in range(len(gsm)) if i not in set(comma)]
    ids = comma + rng.sample(rest, 150)
    golds = [r["answer"].split("####")[1].strip() for r in gsm]
    for i in ids:
        other = rng.choice(golds)
        while other == golds[i]:
            other = rng.choice(golds)
        out.append({"task": "gsm8k", "id": f"test/{i}", "question": gsm[i]["question"], "answer": gsm[i]["answer"],
                    "cases": [{"kind": k, "response": r} for k, r in gsm8k_cases(gsm[i], other, rng)]})
    return out


STUBS = {
    "datasets/__init__.py": "class Dataset: pass\nclass DatasetDict(dict): pass\nclass IterableDataset: pass\n"
                            "class IterableDatasetDict(dict): pass\ndef load_dataset(*a, **k): raise NotImplementedError\n",
    "evaluate/__init__.py": "def load(*a, **k): raise RuntimeError('stub')\n",
    "treetune/__init__.py": "",
    "treetune/common.py": "class Registrable:\n    @classmethod\n    def register(cls, name, exist_ok=False):\n"
                          "        return lambda sub: sub\n",
    "treetune/logging_utils.py": "import logging\ndef get_logger(name): return logging.getLogger(name)\n",
    "treetune/tokenization_utils.py": "Tokenizer = object\n",
    "treetune/tasks/__init__.py": "from .base_task import Task\nfrom .gsm8k import GSM8K\nfrom .math import MATH\n",
    "treetune/episode_generators/__init__.py": "from treetune.common import Registrable\n"
                                               "class EpisodeGenerator(Registrable): pass\n",
    "treetune/episode_generators/base_episode_generator.py": "class Episode: pass\n",
    "treetune/episode_generators/episode_generator_with_reward_function.py":
        "from treetune.common import Registrable\nclass RewardFunction(Registrable): pass\n"
        "class EpisodeGeneratorWithRewardFunction: pass\n",
}
OFFICIAL_FILES = ["tasks/base_task.py", "tasks/gsm8k.py", "tasks/math.py", "tasks/math_answer_exctraction.py",
                  "tasks/math_grader.py", "tasks/math_grader_minerva.py", "tasks/math_normalize.py",
                  "episode_generators/math_episode_generator.py"]


def setup(scratch: str, official: str) -> None:
    for path, text in STUBS.items():
        os.makedirs(os.path.dirname(os.path.join(scratch, path)), exist_ok=True)
        with open(os.path.join(scratch, path), "w") as handle:
            handle.write(text)
    for path in OFFICIAL_FILES:
        shutil.copy(os.path.join(official, "src", "treetune", path), os.path.join(scratch, "treetune", path))


def verdicts(pairs_path: str, out_dir: str, scratch: str) -> None:
    sys.path.insert(0, scratch)
    from treetune.episode_generators.math_episode_generator import MATHRewardFunction
    from treetune.tasks import GSM8K, MATH
    from treetune.tasks import math_grader as grader
    from treetune.tasks import math_grader_minerva as minerva

    math_task = MATH(prepend_in_context_few_shot=False, ensure_fit_in_context_size=False, answer_prefix=None,
                     inplace_split_solution=True, load_dataset_dict=True, dataset_dict_path="data/math")
    gsm8k_task = GSM8K(use_original_format=True, remove_calculator_expressions=True, load_dataset_dict=True,
                       dataset_dict_path="data/gsm8k")
    rewards = {name: MATHRewardFunction(tokenizer=None, math_task=task, penalize_unfinished_response=True,
                                        unfinished_response_penalty=0.0)
               for name, task in (("math", math_task), ("gsm8k", gsm8k_task))}
    calls = {}
    symbolic_equal = minerva.symbolic_equal

    def recording(a, b):
        verdict = bool(symbolic_equal(a, b))
        texts = []
        for latex in (a, b):
            try:
                texts.append(grader._parse_latex(latex))
            except Exception:  # noqa: BLE001
                texts.append(None)
        calls[(a, b)] = {"a": a, "b": b, "a_text": texts[0], "b_text": texts[1], "equal": verdict}
        return verdict

    minerva.symbolic_equal = recording

    def timeout(*_):
        raise TimeoutError()

    signal.signal(signal.SIGALRM, timeout)
    with open(pairs_path, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    for row in rows:
        if row["task"] == "math":
            instance = {"problem": row["problem"], "solution": row["solution"], "answer": ""}
        else:
            instance = {"problem": row["question"].strip(), "answer": row["answer"].split("####")[1].strip()}
        for case in row["cases"]:
            signal.alarm(120)
            case["reward"] = rewards[row["task"]](instance["problem"], case["response"], instance)[0]
            signal.alarm(0)
    for name in ("math", "gsm8k"):
        with open(os.path.join(out_dir, f"official_rewards_{name}.jsonl"), "w", encoding="utf-8") as handle:
            for row in rows:
                if row["task"] == name:
                    handle.write(json.dumps({k: v for k, v in row.items() if k != "task"}) + "\n")
    with open(os.path.join(out_dir, "official_symbolic_equal.jsonl"), "w", encoding="utf-8") as handle:
        for call in calls.values():
            handle.write(json.dumps(call) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("setup")
    p.add_argument("scratch")
    p.add_argument("--official", required=True)
    p = sub.add_parser("pairs")
    p.add_argument("out")
    p.add_argument("--data", required=True)
    p = sub.add_parser("verdicts")
    p.add_argument("pairs")
    p.add_argument("out_dir")
    p.add_argument("--scratch", required=True)
    args = parser.parse_args()
    if args.command == "setup":
        setup(args.scratch, args.official)
    elif args.command == "pairs":
        with open(args.out, "w", encoding="utf-8") as handle:
            for row in make_pairs(args.data):
                handle.write(json.dumps(row) + "\n")
    else:
        verdicts(args.pairs, args.out_dir, args.scratch)


if __name__ == "__main__":
    main()
