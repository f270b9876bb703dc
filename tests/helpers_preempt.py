"""Real signals at random moments of a real run's phases, for preemption tests.

`SignalDuring` sends SIGTERM (or SIGINT) to this process once, from a timer thread, at a random
moment while the `nth` call of a phase runs; if the phase ends first, at its end. The phases are
hooked where a run times them (`metrics.Timer`: "sample", "mc", "train"), or any function
(evaluation, checkpoint save) through `wrap`.
"""
from __future__ import annotations

import contextlib
import functools
import os
import random
import signal
import threading


class SignalDuring:
    """SIGTERM once, during the `nth` (0-based) call of a phase, `max_delay` seconds at most after it starts."""

    def __init__(self, nth: int, max_delay: float = 0.2, signum: int = signal.SIGTERM, seed=None):
        self.nth, self.max_delay, self.signum = nth, max_delay, signum
        self.rng = random.Random(seed)
        self.calls, self.sent, self.delay = 0, False, None
        self.lock = threading.Lock()

    def send(self) -> None:
        with self.lock:
            if not self.sent:
                self.sent = True
                os.kill(os.getpid(), self.signum)

    @contextlib.contextmanager
    def during(self):
        armed = self.calls == self.nth
        self.calls += 1
        timer = None
        if armed:
            self.delay = self.rng.uniform(0, self.max_delay)
            timer = threading.Timer(self.delay, self.send)
            timer.start()
        try:
            yield
        finally:
            if timer is not None:
                timer.cancel()
                self.send()  # at the phase's end at the latest

    def wrap(self, fn):
        """`fn` with the signal armed in its `nth` call."""

        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            with self.during():
                return fn(*args, **kwargs)

        return wrapped


def hook_timer_phase(monkeypatch, phase: str, sender: SignalDuring) -> None:
    """Arm `sender` in the calls of `metrics.Timer` for `phase` ("sample", "mc", "train")."""
    from vinejax.train.metrics import Timer

    real = Timer.__call__

    @contextlib.contextmanager
    def timed(self, name):
        with real(self, name):
            if name == phase:
                with sender.during():
                    yield
            else:
                yield

    monkeypatch.setattr(Timer, "__call__", timed)
