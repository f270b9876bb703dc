"""The ledger task: a plug-in task of vinejax, in one file outside the package.

A problem is a starting balance and a few deposits and withdrawals ("59 +25 -2 -17"); the answer
is the final balance. A worked response applies one move per step, separated by "; ", and ends
with "balance: N" ("59+25=84; 84-2=82; 82-17=65; balance: 65").

Its own data (data/*.jsonl, written by make_data.py), its own grader (the number after the last
"balance:"), its own step rule (a step is one "a±b=c" move; the "balance:" line closes the last
one) and its own character tokenizer for a tiny model. A config names it as
`task.name = "ledger:task"` with this folder importable (the config file's folder is).
"""
import os
import re

from vinejax.tasks import Problem, Task
from vinejax.tasks.char_tokenizer import build_char_tokenizer
from vinejax.tasks.data import read_jsonl

HERE = os.path.dirname(os.path.abspath(__file__))
ALPHABET = "0123456789+-=;: balnce\n"
_BALANCE = re.compile(r"balance:\s*(-?\d+)")


def answer(response: str, problem: Problem):
    """The final balance the response states (the number after its last "balance:"), or None."""
    found = _BALANCE.findall(response[-2000:])
    return found[-1] if found else None


def grade(response: str, problem: Problem) -> float:
    """1.0 when the stated final balance is the true one."""
    return float(answer(response, problem) == problem.answer)


def split_steps(response: str) -> list:
    """One step per move: every "; " starts a step, except the one before "balance:", which joins
    the last move (so the final step states the result)."""
    cuts = [m.start() for m in re.finditer(r"; ", response) if not response.startswith("; balance", m.start())]
    bounds = [0] + cuts + [len(response)]
    return [response[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def load_split(split: str, data_dir: str) -> list:
    return [Problem(problem=r["ledger"], answer=str(r["balance"]), solution=r["worked"])
            for r in read_jsonl(os.path.join(data_dir, f"{split}.jsonl"), ("ledger", "balance", "worked"))]


def task(data_dir: str = os.path.join(HERE, "data")) -> Task:
    """The factory a config names (`task.options` are its keyword arguments)."""
    return Task(name="ledger", grade=grade, split_steps=split_steps, answer=answer,
                loader=lambda split: load_split(split, data_dir), prompt_template="{problem}\n",
                stop_strings=("\n",), tokenizer=lambda: build_char_tokenizer(ALPHABET))
