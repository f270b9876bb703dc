"""A synthetic multi-step integer arithmetic task for fast CPU experiments with tiny models.

Problem text is a fully parenthesised expression evaluated with ordinary precedence, e.g.
``((12+7)*3)-5`` (so it is unambiguous: operations apply left to right, one per pair of
parentheses; the outermost pair is omitted). The gold solution applies one operation per line
and ends with the answer line::

    12+7=19
    19*3=57
    57-5=52
    #### 52

Operands: ``+``/``-`` take ``add_range`` (default 1..99), ``*`` takes ``mul_range`` (default
2..9); every intermediate value stays in 0..``max_value`` (default 999), so the hard steps are
2-3 digit multiplications and carries. With 4 operations a problem plus its solution is about
60 characters.

Problems are a pure function of (seed, split, index). Splits are disjoint by construction: a
problem belongs to the split chosen by a hash of its text (10% test, 10% validation, 80%
train); generation for a split rejects problems hashed to another split.

Systematic noise (``slip_kind="carry"``): an intermediate line whose units digits carry (``+``,
``*``) or borrow (``-``) drops that carry with probability ``slip_rate``; above 0.5 the dropped
carry is what most demonstrations show, a misconception an SFT policy adopts (greedy too) and RL
has to unlearn step by step.

Where slips happen: ``slip_ops`` (default ``"+-*"``) names the operations whose lines may slip
and ``slip_steps`` (default: all) the operation lines (0-based), e.g. ``slip_ops="*"`` makes a
policy that drops the carry of multiplications only: confidently wrong at one kind of step and
right everywhere else, so the final reward alone does not say which line to fix.

Noisy demonstrations (``slip_rate`` > 0, ``slip_kind="random"``): each intermediate line (all but the last operation)
gets, with probability ``slip_rate``, a wrong result (off by 1..10, or by 10/100 as a carry
error). Later lines use the wrong value, and the ``####`` line follows the wrong chain; a later
slip never lands back on the true value, so any slip makes the final answer wrong. ``grade`` always checks against the true answer.

Tokenizer: ``vinejax.tasks.char_tokenizer.save_char_tokenizer(folder, ALPHABET)`` gives a 23-token
vocabulary (19 characters + pad/bos/eos/unk). The default prompt (``get_task("arithmetic")``) is
``"{problem}\n"`` with stop string ``"\n\n"``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import random
from typing import Sequence

import numpy as np

from vinejax.tasks import gsm8k, gsm8k_grade_strict
from vinejax.tasks.base import Problem, grade_serially

ALPHABET = "\n0123456789+-*=()# "  # every character the task's texts use
OPERATIONS = "+-*"
SLIP_KINDS = ("random", "carry")
SPLIT_FRACTIONS = {"test": (0, 10), "validation": (10, 20), "train": (20, 100)}  # hash buckets
DEFAULT_SIZES = {"train": 20000, "validation": 500, "test": 500}


@dataclasses.dataclass(frozen=True)
class ArithmeticConfig:
    """Knobs of the generator (all defaults are the documented ones)."""

    num_operations: int = 4
    add_range: tuple[int, int] = (1, 99)
    mul_range: tuple[int, int] = (2, 9)
    start_range: tuple[int, int] = (2, 99)
    max_value: int = 999
    slip_rate: float = 0.0
    slip_kind: str = "random"  # "random" perturbations, or "carry": a dropped carry / borrow
    slip_ops: str = "+-*"  # the operations whose lines may slip (e.g. "*": only multiplications)
    slip_steps: tuple[int, ...] = ()  # the operation lines (0-based) that may slip; () = every intermediate line
    seed: int = 0

    def __post_init__(self):
        if self.slip_kind not in SLIP_KINDS:
            raise ValueError(f"arithmetic option slip_kind={self.slip_kind!r}; choose one of {', '.join(SLIP_KINDS)}")
        if not self.slip_ops or set(self.slip_ops) - set(OPERATIONS):
            raise ValueError(f"arithmetic option slip_ops={self.slip_ops!r}: give one or more of {OPERATIONS!r}")
        bad = [s for s in self.slip_steps if not isinstance(s, int) or not 0 <= s < self.num_operations - 1]
        if bad:
            raise ValueError(f"arithmetic option slip_steps={tuple(self.slip_steps)!r}: {bad[0]!r} is not an "
                             f"intermediate line (0..{self.num_operations - 2}; the last line never slips)")

    def may_slip(self, line: int, op: str) -> bool:
        """Whether operation line `line` (0-based) with operation `op` is one the demonstrations may get wrong."""
        return op in self.slip_ops and (not self.slip_steps or line in self.slip_steps)


def _bucket(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") % 100


def _apply(value: int, op: str, operand: int) -> int:
    return value + operand if op == "+" else value - operand if op == "-" else value * operand


def _random_chain(rng: random.Random, cfg: ArithmeticConfig) -> tuple[int, list[tuple[str, int]]]:
    start = rng.randint(*cfg.start_range)
    value, operations = start, []
    for _ in range(cfg.num_operations):
        choices = ["+", "-", "*"]
        rng.shuffle(choices)
        for op in choices:
            operand = rng.randint(*(cfg.mul_range if op == "*" else cfg.add_range))
            result = _apply(value, op, operand)
            if 0 <= result <= cfg.max_value:
                break
        else:  # nothing fits: subtract something small
            op, operand = "-", rng.randint(0, value)
            result = value - operand
        operations.append((op, operand))
        value = result
    return start, operations


def expression_text(start: int, operations: Sequence[tuple[str, int]]) -> str:
    """``((a+b)*c)-d``: fully parenthesised except the outermost pair."""
    text = str(start)
    for position, (op, operand) in enumerate(operations):
        text = f"{text}{op}{operand}" if position == 0 else f"({text}){op}{operand}"
    return text


def solve(start: int, operations: Sequence[tuple[str, int]], slips: dict | None = None) -> tuple[str, int]:
    """Solution text (one operation per line, then ``#### answer``) and its final value.

    ``slips`` maps a line index to the wrong result written on that line; later lines use it.
    """
    lines, value = [], start
    for index, (op, operand) in enumerate(operations):
        result = _apply(value, op, operand)
        if slips and index in slips:
            result = slips[index]
        lines.append(f"{value}{op}{operand}={result}")
        value = result
    lines.append(f"#### {value}")
    return "\n".join(lines), value


def _slip_value(rng: random.Random, correct: int, avoid: int) -> int:
    """A wrong result for a line whose right result is ``correct``; never equal to ``avoid`` (the
    true value), so a second slip cannot cancel an earlier one."""
    for _ in range(20):
        delta = rng.choice([rng.randint(1, 10), 10, 100]) * rng.choice([-1, 1])
        if correct + delta >= 0 and correct + delta != avoid:
            return correct + delta
    return correct + 1 if correct + 1 != avoid else correct + 2


def _carry_slip(value: int, op: str, operand: int, correct: int) -> int | None:
    """The result with the units-digit carry (or borrow) dropped, or None when there is none."""
    if op == "+" and value % 10 + operand % 10 >= 10:
        return correct - 10
    if op == "-" and value % 10 < operand % 10:
        return correct + 10
    if op == "*" and (value % 10) * operand >= 10:
        return correct - 10 * ((value % 10) * operand // 10)
    return None


def make_problem(index: int, split: str, cfg: ArithmeticConfig = ArithmeticConfig()) -> Problem:
    """The ``index``-th problem of ``split`` (a pure function of cfg.seed, split and index)."""
    low, high = SPLIT_FRACTIONS[split]
    for attempt in range(10_000):
        rng = random.Random(f"{cfg.seed}/{split}/{index}/{attempt}")
        start, operations = _random_chain(rng, cfg)
        text = expression_text(start, operations)
        if low <= _bucket(text) < high:
            break
    gold, answer = solve(start, operations)
    slips = {}
    slip_rng = random.Random(f"{cfg.seed}/{split}/{index}/slips")
    value = true_value = start
    for line, (op, operand) in enumerate(operations[:-1]):  # intermediate lines only
        value_before = value
        correct, true_value = _apply(value, op, operand), _apply(true_value, op, operand)
        value = correct
        if not cfg.may_slip(line, op):
            continue
        if cfg.slip_kind == "carry":
            wrong = _carry_slip(value_before, op, operand, correct)
            if wrong is not None and wrong >= 0 and wrong != true_value and slip_rng.random() < cfg.slip_rate:
                value = slips[line] = wrong
        elif slip_rng.random() < cfg.slip_rate:
            value = _slip_value(slip_rng, correct, avoid=true_value)
            slips[line] = value
    solution = solve(start, operations, slips)[0] if slips else gold
    return Problem(problem=text, answer=str(answer), solution=solution,
                   meta={"gold_solution": gold, "slips": sorted(slips), "operations": operations})


def load_split(split: str, num_problems: int | None = None, **options) -> list[Problem]:
    """``num_problems`` problems of ``split`` (defaults: 20000 / 500 / 500); options:
    ArithmeticConfig fields (``OPTIONS``)."""
    if split not in SPLIT_FRACTIONS:
        raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLIT_FRACTIONS)}")
    cfg = ArithmeticConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})
    count = DEFAULT_SIZES[split] if num_problems is None else num_problems
    return [make_problem(i, split, cfg) for i in range(count)]


OPTIONS = ("num_problems",) + tuple(f.name for f in dataclasses.fields(ArithmeticConfig))  # of load_split


def grade(response: str, problem: Problem) -> float:
    """1.0 when the integer after the last ``####`` equals ``problem.answer`` (GSM8K rules), else 0.0."""
    return gsm8k_grade_strict.grade(response, problem)


def answer(response: str, problem: Problem) -> str | None:
    """The integer after the last ``####`` as a vote key (``gsm8k_grade_strict.answer``), or None."""
    return gsm8k_grade_strict.answer(response, problem)


def grade_batch(responses: Sequence[str], problems: Sequence[Problem], num_workers: int | None = None) -> np.ndarray:
    """Grade many pairs (cheap string work; ``num_workers`` is ignored)."""
    del num_workers
    return grade_serially(grade, responses, problems)


def tokenizer():
    """The task's character tokenizer (`char_tokenizer`, one token per character of ``ALPHABET``)."""
    from vinejax.tasks.char_tokenizer import build_char_tokenizer

    return build_char_tokenizer(ALPHABET)


def split_steps(response: str) -> list[str]:
    """Line steps by GSM8K's rules: each newline starts a step; ``\\n#### answer`` joins the last."""
    return gsm8k.split_steps(response)
