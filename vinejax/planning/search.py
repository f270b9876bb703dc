"""Compiled per-device memory of phases (cached), and the largest batch-like setting that fits.

`Compiler.measure` lowers a phase, compiles it ahead of time and reads
`compiled.memory_analysis()`: bytes of the arguments, outputs, temporaries, generated code, and
outputs aliased to donated arguments. A program's peak on one device is taken as
arguments + outputs − aliased + temporaries + code (XLA's buffer assignment: arguments and
outputs live throughout, temporaries share one block); the phase's peak adds the state resident
beside it. Results are cached by a hash of the lowered program, so identical programs (the same
model and sizes in two configs) compile once; `cache_path` keeps them across runs.

A TPU compile (`planning.targets`) refuses a program whose temporaries exceed the chip's memory;
its error names their size, which is taken as the program's temporaries (arguments from the
abstract inputs, outputs unknown: a lower bound, `Measured.refused`).

`largest_fitting` finds the largest value of a setting whose phases all fit, by compiling: it
measures the configured value and a neighbour (half or double), fits bytes = a + b·value
through the measured points, compiles the predicted largest value, and keeps narrowing between
the largest value measured to fit and the smallest measured not to, within a compile budget.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from typing import Callable, Optional

import jax
import numpy as np

from vinejax.planning.phases import Phase, device_bytes

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Measured:
    """`compiled.memory_analysis()` of one program on one device (bytes), plus compile seconds."""

    argument: int
    output: int
    alias: int
    temp: int
    code: int
    seconds: float = 0.0
    refused: bool = False  # the compiler ran out of memory: temp is what it said it needed, output unknown

    @property
    def program(self) -> int:
        """Peak bytes of the program on one device."""
        return self.argument + self.output - self.alias + self.temp + self.code


class Compiler:
    """Lowers and compiles phases ahead of time; per-device memory, cached by program text."""

    def __init__(self, run, cache_path: Optional[str] = None, log: Callable[[str], None] = lambda _: None):
        self.run, self.cache_path, self.log = run, cache_path, log
        self.cache: dict = {}
        self.compiles = 0
        if cache_path and os.path.isfile(cache_path):
            with open(cache_path) as f:
                self.cache = json.load(f)

    def measure(self, phase: Phase) -> Measured:
        lowered = phase.lower(self.run)
        device = self.run.mesh.devices.flat[0]
        target = f"{jax.__version__} {device.platform} {device.device_kind}"
        key = hashlib.sha256(f"{target}\n{lowered.as_text()}".encode()).hexdigest()
        if key not in self.cache:
            start = time.time()
            stats = compiled_memory(lowered, device_bytes(phase.args))
            seconds = time.time() - start
            self.compiles += 1
            self.cache[key] = stats | dict(seconds=round(seconds, 1))
            at = f" at {phase.knob}={phase.value}" if phase.knob else ""
            refused = f" (out of memory: temporaries {stats['temp'] / GiB:.1f} GiB)" if stats.get("refused") else ""
            self.log(f"  compiled {phase.name}{at} in {seconds:.0f}s{refused}")
            self._save()
        return Measured(**self.cache[key])

    def peak(self, phase: Phase) -> int:
        """The phase's peak on one device: its program plus the state resident beside it."""
        return self.measure(phase).program + resident_bytes(phase)

    def _save(self) -> None:
        if self.cache_path:
            tmp = self.cache_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.cache, f, indent=0, sort_keys=True)
            os.replace(tmp, self.cache_path)


def compiled_memory(lowered, argument_bytes: int) -> dict:
    """Compile `lowered`; its memory_analysis() as Measured's fields (bytes). When the compiler
    refuses for lack of memory (a TPU target), the temporaries its error names, `argument_bytes`
    for the arguments, and refused=True."""
    try:
        stats = lowered.compile().memory_analysis()
    except jax.errors.JaxRuntimeError as error:
        found = re.search(r"HLO temporaries \((\d+(?:\.\d+)?)([KMGT])\)", str(error))
        if "RESOURCE_EXHAUSTED" not in str(error) or not found:
            raise
        temp = int(float(found.group(1)) * 1024 ** "KMGT".index(found.group(2)) * 1024)
        return dict(argument=argument_bytes, output=0, alias=0, temp=temp, code=0, refused=True)
    return dict(argument=stats.argument_size_in_bytes, output=stats.output_size_in_bytes,
                alias=stats.alias_size_in_bytes, temp=stats.temp_size_in_bytes, code=stats.generated_code_size_in_bytes)


def resident_bytes(phase: Phase) -> int:
    return sum(device_bytes(t) for t in phase.resident.values())


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """The largest fitting value of a setting (None: not even the smallest fits)."""

    knob: str
    configured: int
    largest: Optional[int]
    verified: bool  # the next larger candidate was compiled and does not fit (or there is none)
    measured: dict  # {value: peak bytes per device} of every value compiled


def largest_fitting(peak_at: Callable[[int], int], candidates: list, configured: int, budget: int, knob: str,
                    max_compiles: int = 4) -> SearchResult:
    """The largest of the sorted `candidates` with peak_at(value) <= budget (see the module docstring)."""
    measured: dict = {}

    def at(value):
        if value not in measured:
            measured[value] = peak_at(value)
        return measured[value]

    start = min(candidates, key=lambda c: abs(c - configured))
    at(start)
    grow = measured[start] <= budget
    step = [c for c in candidates if (c >= 2 * start if grow else 2 * c <= start)]
    neighbour = (step[0] if grow else step[-1]) if step else None
    if neighbour is None:  # start is at an end of the list: look the other way
        other = [c for c in candidates if c != start]
        neighbour = min(other, key=lambda c: abs(c - start)) if other else None
    if neighbour is not None:
        at(neighbour)
    while len(measured) < max_compiles:
        between = _untested_between(measured, candidates, budget)
        if not between:
            break
        at(_predicted(measured, between, budget))
    fits = [v for v, b in measured.items() if b <= budget]
    largest = max(fits) if fits else None
    verified = not _untested_between(measured, candidates, budget)
    return SearchResult(knob, configured, largest, verified, dict(sorted(measured.items())))


def _untested_between(measured: dict, candidates: list, budget: int) -> list:
    """Candidates above the largest value measured to fit and below the smallest measured not to."""
    lo = max((v for v, b in measured.items() if b <= budget), default=None)
    hi = min((v for v, b in measured.items() if b > budget), default=None)
    return [c for c in candidates if (lo is None or c > lo) and (hi is None or c < hi) and c not in measured]


def _predicted(measured: dict, between: list, budget: int) -> int:
    """The candidate of `between` that a straight line through the measured points says is the
    largest to fit (clamped to `between`)."""
    xs, ys = np.array(list(measured), float), np.array(list(measured.values()), float)
    if len(xs) < 2 or np.ptp(xs) == 0:
        return between[-1] if ys.max() <= budget else between[0]
    slope, offset = np.polyfit(xs, ys, 1)
    fit = [c for c in between if offset + slope * c <= budget]
    return max(fit) if fit else between[0]
