"""The "jsonl" task: a user's verifiable task from jsonl files, without writing Python.

    task.name = "jsonl"
    task.options = dict(train_file="data/train.jsonl", test_file="data/test.jsonl", num_validation=50,
                        question_field="question", answer_field="answer", extract="last_number",
                        grader="numeric", steps="newline")

Options (`JsonlOptions`): the files of each split (validation carved out of train, seeded, when
there is no validation file: those records leave train; the hold-out size is checked against
the file before anything loads); which record fields hold the question, the gold answer and
the SFT solution; how an answer is read from a text (`EXTRACTORS`: GSM8K's "####", the last
"\\boxed{}", the last number, or a regex's first group); how it is compared with the gold
answer (`GRADERS`: numeric value, the strict math-equivalence grader, exact string); how a
response is cut into steps (`STEP_RULES`: newline, blank line, a regex that starts each step,
the official GSM8K or MATH splitter); the prompt template and the stop strings.
The gold answer is the extractor applied to the answer field (the field itself when it finds
nothing). A response over 100,000 characters scores 0; the regex runs on the model's text, so
keep it free of nested repetition.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Optional, Sequence

import numpy as np

from vinejax.tasks import data, gsm8k, gsm8k_grade_strict, math_grade_strict, math_steps
from vinejax.tasks.base import DEFAULT_PROMPT_TEMPLATE, DEFAULT_STOP_STRINGS, Problem, Task, TaskError, check_batch
from vinejax.tasks.math_answer import find_boxed, normalize

MAX_RESPONSE_CHARS = 100_000
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def _last_number(text: str) -> Optional[str]:
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def _regex_answer(pattern: re.Pattern, text: str) -> Optional[str]:
    matches = list(pattern.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    return (last.group(1) if pattern.groups else last.group(0)).strip()


EXTRACTORS = {  # how an answer is read from a text
    "gsm8k": lambda pattern, text: gsm8k.extract_answer(text),
    "boxed": lambda pattern, text: find_boxed(text),
    "last_number": lambda pattern, text: _last_number(text),
    "regex": _regex_answer,
}
GRADERS = ("numeric", "math", "exact")
STEP_RULES = ("newline", "blank_line", "regex", "gsm8k", "math")


@dataclasses.dataclass(frozen=True)
class JsonlOptions:
    """The options of the jsonl task (module docstring)."""

    train_file: str = ""
    validation_file: str = ""
    test_file: str = ""
    num_validation: int = 0  # validation records carved out of train when there is no validation file
    seed: int = 42  # of that carve-out
    question_field: str = "question"
    answer_field: str = "answer"
    solution_field: str = ""  # the SFT target; "" = the answer field
    extract: str = "last_number"  # gsm8k | boxed | last_number | regex
    answer_regex: str = ""  # extract "regex": its first group (or the whole match) of the last match
    grader: str = "numeric"  # numeric | math | exact
    steps: str = "newline"  # newline | blank_line | regex | gsm8k | math
    step_regex: str = ""  # steps "regex": every match starts a step
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    stop_strings: tuple = DEFAULT_STOP_STRINGS

    def files(self) -> dict:
        return {split: path for split, path in (("train", self.train_file), ("validation", self.validation_file),
                                                ("test", self.test_file)) if path}

    def check(self) -> None:
        """One-line errors for options that cannot work, before any model loads."""
        def bad(key, why):
            raise TaskError(f"config key 'task.options.{key}': {why}")

        if self.extract not in EXTRACTORS:
            bad("extract", f"{self.extract!r} is not one of {', '.join(EXTRACTORS)}")
        if self.grader not in GRADERS:
            bad("grader", f"{self.grader!r} is not one of {', '.join(GRADERS)}")
        if self.steps not in STEP_RULES:
            bad("steps", f"{self.steps!r} is not one of {', '.join(STEP_RULES)}")
        for key, needed in (("answer_regex", self.extract == "regex"), ("step_regex", self.steps == "regex")):
            if needed and not getattr(self, key):
                bad(key, f"is needed with {'extract' if key == 'answer_regex' else 'steps'}=\"regex\"")
            try:
                re.compile(getattr(self, key))
            except re.error as error:
                bad(key, f"not a regular expression ({error})")
        if not self.train_file and not self.test_file:
            bad("train_file", "give the train file (and a validation or test file, or num_validation)")
        if self.num_validation < 0:
            bad("num_validation", "must be >= 0")
        for path in self.files().values():
            data.count_records(path)  # a missing file is named now
        data.check_holdout(self.files(), self.num_validation)


def split_at(pattern: re.Pattern, text: str) -> list[str]:
    """`text` cut before every match of `pattern` (a match at 0 starts the first step): steps
    whose concatenation is `text`, empty ones left out."""
    cuts = sorted({m.start() for m in pattern.finditer(text)} - {0})
    bounds = [0] + cuts + [len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


_SPLITTERS = {
    "newline": functools.partial(split_at, re.compile(r"\n")),
    "blank_line": functools.partial(split_at, re.compile(r"(?<!\n)\n\n")),
    "gsm8k": gsm8k.split_steps,
    "math": math_steps.split_steps,
}


@dataclasses.dataclass(frozen=True)
class JsonlGrader:
    """Extraction and comparison of the jsonl task (picklable: the workers may rebuild it)."""

    extract: str
    answer_regex: str
    grader: str

    @functools.cached_property
    def _pattern(self) -> Optional[re.Pattern]:
        return re.compile(self.answer_regex) if self.answer_regex else None

    def extracted(self, text: str) -> Optional[str]:
        if len(text) > MAX_RESPONSE_CHARS:
            return None
        found = EXTRACTORS[self.extract](self._pattern, text)
        return None if found is None or not found.strip() else found.strip()

    def answer(self, response: str, problem: Problem) -> Optional[str]:
        """The vote key of a response: its extracted answer, normalised like the grader compares."""
        del problem
        found = self.extracted(response)
        if found is None:
            return None
        if self.grader == "math":
            return normalize(found)
        number = gsm8k_grade_strict.as_number(found.replace(",", ""))
        return repr(number) if self.grader == "numeric" and number is not None else found

    def grade_batch(self, responses: Sequence[str], problems: Sequence[Problem],
                    num_workers: int | None = None) -> np.ndarray:
        check_batch(responses, problems)
        predicted = [self.extracted(r) for r in responses]
        if self.grader == "math":
            return math_grade_strict.grade_answers(predicted, [p.answer for p in problems], num_workers)
        same = (gsm8k_grade_strict.answers_equal if self.grader == "numeric"
                else lambda a, b: a.strip() == b.strip())
        return np.array([float(a is not None and same(a, p.answer)) for a, p in zip(predicted, problems)], np.float32)

    def grade(self, response: str, problem: Problem) -> float:
        return float(self.grade_batch([response], [problem], num_workers=1)[0])


def load_split(split: str, options: JsonlOptions) -> list[Problem]:
    """The `Problem` records of `split` (`data.records_of_split`: a carved-out validation leaves train)."""
    fields = [options.question_field, options.answer_field] + [options.solution_field] * bool(options.solution_field)
    read = lambda path: data.read_jsonl(path, fields)
    records = data.records_of_split(options.files(), split, options.num_validation, options.seed, read)
    gold = JsonlGrader(options.extract, options.answer_regex, "exact")
    out = []
    for record in records:
        answer_text = str(record[options.answer_field])
        solution = str(record[options.solution_field]) if options.solution_field else answer_text
        answer = gold.extracted(answer_text) or answer_text.strip()
        meta = {k: v for k, v in record.items() if k not in fields and isinstance(v, (str, int, float))}
        out.append(Problem(problem=str(record[options.question_field]), answer=answer, solution=solution, meta=meta))
    return out


OPTIONS = tuple(f.name for f in dataclasses.fields(JsonlOptions))


def jsonl_task(**options) -> Task:
    """The jsonl task of `options` (`JsonlOptions` fields; the caller checked their names)."""
    if "stop_strings" in options:
        options["stop_strings"] = tuple(options["stop_strings"])
    opts = JsonlOptions(**options)
    opts.check()
    grading = JsonlGrader(opts.extract, opts.answer_regex, opts.grader)
    splitter = (functools.partial(split_at, re.compile(opts.step_regex)) if opts.steps == "regex"
                else _SPLITTERS[opts.steps])
    return Task(name="jsonl", grade=grading.grade, grade_batch=grading.grade_batch, split_steps=splitter,
                loader=functools.partial(load_split, options=opts), prompt_template=opts.prompt_template,
                stop_strings=opts.stop_strings, grader=opts.grader, answer=grading.answer)
