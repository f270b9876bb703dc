"""Sandboxed symbolic equivalence of two LaTeX answers, bounded in time.

The model's answer is untrusted text. It is never evaluated as Python: both sides are parsed
by sympy's ANTLR LaTeX grammar (``sympy.parsing.latex.parse_latex``), which builds sympy
objects from a parse tree. Even so, symbolic work can explode (``9^{9^{9^{9}}}``), so it runs
in separate worker processes (fresh interpreters; memory-capped with ``RLIMIT_AS``) and every check has a
wall-clock timeout; a worker that overruns is killed and replaced, and the check counts as
"not equal". Inputs that are too long or too deeply nested are refused before any work.

Workers answer named checks (``CHECKS``): "latex" (``symbolic_equal`` above, the strict
grader's), "vineppo" (``math_vineppo_symbolic.texts_equal``, the official grader's) and
"task_grade" (``tasks.sandbox.grade_in_worker``: a plug-in task's own ``grade``, which is
untrusted for time). A reply is "1" / "0", a number, or "E" when the check raised.
"""
from __future__ import annotations

import atexit
import importlib
import json
import math
import os
import re
import subprocess
import sys
import time
from multiprocessing.connection import wait
from typing import Sequence

MAX_CHARS = 300
MAX_BRACE_DEPTH = 12
DEFAULT_TIMEOUT = 2.0
STARTUP_TIMEOUT = 120.0
MEMORY_LIMIT_BYTES = 2 << 30
MAX_JOB_CHARS = 4000  # a symbolic job whose arguments are longer in total is answered False unsent
CHECKS = {  # check name -> (module, function, most characters of a job's arguments); the function takes strings
    "latex": ("vinejax.tasks.symbolic", "symbolic_equal", MAX_JOB_CHARS),
    "vineppo": ("vinejax.tasks.math_vineppo_symbolic", "texts_equal", MAX_JOB_CHARS),
    "task_grade": ("vinejax.tasks.sandbox", "grade_in_worker", 1_000_000),
    "task_load": ("vinejax.tasks.sandbox", "load_in_worker", 1_000_000),
}
WARMUP_ENV = "VINEJAX_WORKER_WARMUP"  # JSON [[check, *args], ...] a worker runs before it is ready


def admissible(latex: str) -> bool:
    """True when ``latex`` is small and shallow enough to attempt symbolic work on."""
    if not latex or len(latex) > MAX_CHARS:
        return False
    depth = 0
    for char in latex:
        depth += char == "{"
        depth -= char == "}"
        if depth > MAX_BRACE_DEPTH:
            return False
    # a power tower or a huge literal exponent is refused outright (the timeout is the backstop)
    if re.search(r"\^\s*\{?\s*-?\d{4,}", latex) or re.search(r"\^\s*\{[^{}]*\^", latex):
        return False
    return True


def _latex_to_sympy(latex: str):
    """Parse LaTeX with sympy's ANTLR grammar (no Python evaluation); ``\\pi`` becomes sympy.pi."""
    import sympy
    from sympy.parsing.latex import parse_latex

    expression = parse_latex(latex)
    pi_symbols = [s for s in expression.free_symbols if s.name == "pi"]
    return expression.subs({s: sympy.pi for s in pi_symbols}) if pi_symbols else expression


def symbolic_equal(first: str, second: str, tolerance: float = 1e-6) -> bool:
    """In-process check (call it inside a worker): simplify(a - b) == 0, or numerically equal
    within ``tolerance`` relatively (tight: "3.14" is not "\\pi", "3.14159" is)."""
    import sympy

    if not (admissible(first) and admissible(second)):
        return False
    try:
        a, b = _latex_to_sympy(first), _latex_to_sympy(second)
    except Exception:
        return False
    if isinstance(a, sympy.Equality) or isinstance(b, sympy.Equality):
        return bool(a == b)
    try:
        if a == b or sympy.simplify(a - b) == 0:
            return True
    except Exception:
        pass
    try:
        value_a, value_b = complex(sympy.N(a)), complex(sympy.N(b))
        if not all(math.isfinite(part) for v in (value_a, value_b) for part in (v.real, v.imag)):
            return False
        return abs(value_a - value_b) <= tolerance * max(abs(value_a), abs(value_b))
    except Exception:
        return False


def _check_function(name: str):
    module, function, _ = CHECKS[name]
    return getattr(importlib.import_module(module), function)


def serve() -> None:
    """Worker loop: one JSON ``[check, *args]`` per stdin line -> one ``1``/``0`` line on stdout."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    except (ImportError, ValueError, OSError):
        pass
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout = sys.stderr  # stray prints from libraries must not corrupt the reply channel
    import sympy  # noqa: F401  (warm the imports before announcing readiness)

    try:
        _latex_to_sympy("x+1")
        _check_function("vineppo")("(x)-(x)", "x", "x")
    except Exception:
        pass
    for name, *arguments in json.loads(os.environ.get(WARMUP_ENV, "[]")):  # e.g. load a plug-in task
        try:
            _check_function(name)(*arguments)
        except BaseException:
            pass
    replies.write("ready\n")
    replies.flush()
    for line in sys.stdin:
        try:
            name, *arguments = json.loads(line)
            result = _check_function(name)(*map(str, arguments))
            reply = ("1" if result else "0") if isinstance(result, bool) else repr(float(result))
        except BaseException:  # MemoryError, RecursionError, bad input: "E", keep serving
            reply = "E"
        replies.write(reply + "\n")
        replies.flush()


class _Worker:
    """One ``python -c serve()`` subprocess (independent of the caller's ``__main__``)."""

    def __init__(self, warmup: Sequence = ()):
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, **{WARMUP_ENV: json.dumps(list(warmup))})
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from vinejax.tasks.symbolic import serve; serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=env, text=True, bufsize=1)
        self.reader = self.process.stdout
        self.ready = False

    def wait_ready(self) -> None:
        """Block until the worker has imported sympy (once; later calls return at once)."""
        if self.ready:
            return
        if not wait([self.reader], timeout=STARTUP_TIMEOUT) or self.reader.readline().strip() != "ready":
            self.kill()
            raise RuntimeError("symbolic worker failed to start")
        self.ready = True

    def send(self, check: str, arguments: Sequence[str]) -> None:
        self.process.stdin.write(json.dumps([check, *arguments]) + "\n")
        self.process.stdin.flush()

    def receive(self) -> float | None:
        """The check's value (1.0 / 0.0 for a bool), None when it raised."""
        line = self.reader.readline()
        if not line:
            raise EOFError("symbolic worker died")
        reply = line.strip()
        return None if reply == "E" else float(reply)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=5)
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass


class SymbolicPool:
    """A few persistent worker processes answering ``symbolic_equal`` with a per-check timeout."""

    def __init__(self, num_workers: int = 1, timeout: float = DEFAULT_TIMEOUT):
        self.num_workers = max(1, int(num_workers))
        self.timeout = timeout
        self._workers: list[_Worker] = []
        self._warmup: list = []  # [check, *args] every worker runs before it is ready (`warm_up`)

    def worker_pids(self) -> list[int]:
        """Process ids of the live sandboxed workers."""
        return [w.process.pid for w in self._workers if w.process.poll() is None]

    def _ensure_workers(self, count: int) -> None:
        new = [_Worker(self._warmup) for _ in range(min(count, self.num_workers) - len(self._workers))]
        for worker in new:  # start all first, then wait: startups overlap
            worker.wait_ready()
        self._workers.extend(new)

    def check_many(self, pairs: Sequence[Sequence[str]], check: str = "latex") -> list[bool]:
        """The ``check`` (a name in ``CHECKS``; "latex": ``symbolic_equal``) of each tuple of
        arguments, in parallel over the workers; timeouts, errors and oversized jobs give False."""
        return [bool(x) for x in self.run_many(pairs, check)]

    def run_many(self, pairs: Sequence[Sequence[str]], check: str) -> list[float | None]:
        """The value of the ``check`` of each tuple of arguments, in parallel over the workers,
        each cut at ``timeout`` seconds: None for a check that raised, timed out or killed its
        worker, 0.0 for an oversized job (left unsent)."""
        if check not in CHECKS:
            raise ValueError(f"unknown symbolic check {check!r}; known: {', '.join(CHECKS)}")
        results: list = [0.0] * len(pairs)
        jobs = [i for i, job in enumerate(pairs) if sum(map(len, job)) <= CHECKS[check][2]
                and (check != "latex" or all(map(admissible, job)))]
        if not jobs:
            return results
        self._ensure_workers(len(jobs))
        idle = list(range(len(self._workers)))
        busy: dict[int, tuple[int, float]] = {}  # worker slot -> (job index, deadline)
        queue = list(reversed(jobs))
        while queue or busy:
            while queue and idle:
                slot, job = idle.pop(), queue.pop()
                self._workers[slot].wait_ready()
                self._workers[slot].send(check, pairs[job])
                busy[slot] = (job, time.monotonic() + self.timeout)
            nearest = min(deadline for _, deadline in busy.values())
            ready = wait([self._workers[s].reader for s in busy],
                         timeout=max(0.0, nearest - time.monotonic()))
            now = time.monotonic()
            for slot in list(busy):
                worker = self._workers[slot]
                job, deadline = busy[slot]
                if worker.reader in ready:
                    try:
                        results[job] = worker.receive()
                    except (EOFError, OSError):  # the worker died (e.g. memory cap)
                        results[job] = None
                        self._replace(slot)
                elif now >= deadline:
                    results[job] = None
                    self._replace(slot)
                else:
                    continue
                del busy[slot]
                idle.append(slot)
        return results

    def _replace(self, slot: int) -> None:
        """Kill the worker in ``slot`` and start a new one; it is waited for only when it gets
        its next job, so a call that cut a check short returns without waiting for the restart."""
        self._workers[slot].kill()
        self._workers[slot] = _Worker(self._warmup)

    def warm_up(self, check: str, *arguments: str) -> None:
        """Have every worker run `check(*arguments)` before it takes jobs (e.g. load a plug-in
        task: outside the per-job timeout); live workers are restarted to do so."""
        call = [check, *arguments]
        if call not in self._warmup:
            self._warmup.append(call)
            self.close()

    def close(self) -> None:
        """Stop all worker processes."""
        for worker in self._workers:
            worker.kill()
        self._workers = []


_POOLS: dict[int, SymbolicPool] = {}


def get_pool(num_workers: int = 1) -> SymbolicPool:
    """A shared pool with ``num_workers`` workers (created lazily, closed at exit)."""
    num_workers = max(1, int(num_workers))
    if num_workers not in _POOLS:
        _POOLS[num_workers] = SymbolicPool(num_workers)
    return _POOLS[num_workers]


@atexit.register
def _close_pools() -> None:
    for pool in _POOLS.values():
        pool.close()
