"""Stopping a run cleanly when it is told to: SIGTERM (a preempted TPU VM or spot instance, a
SLURM time limit, a Kubernetes eviction) or SIGINT (Ctrl-C).

The first signal only takes note. The stage runner asks `Signals.stop_now()` at each safe point
(after an RL iteration, an optimizer step, an evaluation); once it answers True the runner saves a
checkpoint of the work done, prints one line and raises `Preempted`; `experiments/run.py` then
exits with `EXIT_PREEMPTED`: run the same command again to continue. A second signal ends the
process at once (exit 128 + signal number), without a traceback.

Several processes stop at the same safe point through JAX's preemption service: it catches
SIGTERM on whichever host receives it and agrees with every host on the step to stop at
(`multihost_utils.reached_preemption_sync_point`, which orbax's CheckpointManager uses too).
A Ctrl-C on one host is handed to that service as a SIGTERM. Without the service (one process,
or `jax_enable_preemption_service` off) the signal is caught here, and with several processes
the hosts compare notes at each safe point (`multihost.any_process`).
"""
from __future__ import annotations

import contextlib
import itertools
import os
import signal
import threading
from typing import Iterator, Optional

import jax
from jax.experimental import multihost_utils

from vinejax import multihost

EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: stopped on request, checkpoint saved; rerun to continue

_SAFE_POINTS = itertools.count()  # every process passes the same safe points in the same order


class Preempted(Exception):
    """The run stopped at a safe point on request; its message is the line the user saw."""


def _jax_catches_sigterm() -> bool:
    """Whether JAX's preemption service owns SIGTERM (a `jax.distributed` run)."""
    return jax.distributed.is_initialized() and bool(jax.config.jax_enable_preemption_service)


class Signals:
    """What signals have arrived; `stop_now` is the collective decision taken at a safe point."""

    def __init__(self, jax_service: bool):
        self.jax_service = jax_service
        self.received: Optional[int] = None  # the first signal's number (this process)
        self.count = 0

    def note(self, signum: int) -> None:
        """The Python handler (main thread): the first signal is noted before the next safe point."""
        if self.received is None:
            self.received = signum

    def count_one(self, signum: int) -> None:
        """Every SIGINT / SIGTERM, from the watcher thread (even while the main thread waits in XLA)."""
        self.count += 1
        if self.count > 1:
            os._exit(128 + signum)  # the second signal: now, whatever the main thread is doing
        self.note(signum)
        if self.jax_service and signum != signal.SIGTERM:
            os.kill(os.getpid(), signal.SIGTERM)  # JAX's service agrees on a step with every host

    def stop_now(self) -> bool:
        """True, on every process at the same safe point, once a stop has been requested."""
        step = next(_SAFE_POINTS)
        if self.jax_service:
            return bool(multihost_utils.reached_preemption_sync_point(step))
        return multihost.any_process(self.received is not None)

    def describe(self) -> str:
        """The signal this process caught; "a preemption notice" when JAX's service caught it
        (here or on another host)."""
        return signal.Signals(self.received).name if self.received else "a preemption notice"


@contextlib.contextmanager
def watch() -> Iterator[Signals]:
    """Catch SIGINT and SIGTERM for the duration (the previous handlers come back after).

    The signals are also counted by a thread reading Python's wakeup file descriptor, so a second
    signal ends the process even while the main thread waits inside XLA. Outside the main thread
    nothing is caught (Python handles signals there only)."""
    signals = Signals(_jax_catches_sigterm())
    if threading.current_thread() is not threading.main_thread():
        yield signals
        return
    caught = (signal.SIGINT,) if signals.jax_service else (signal.SIGINT, signal.SIGTERM)
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)

    def watcher() -> None:
        while True:
            byte = os.read(read_fd, 1)
            if not byte or byte[0] == 0:
                return
            if byte[0] in caught:
                signals.count_one(byte[0])

    thread = threading.Thread(target=watcher, name="vinejax-signals", daemon=True)
    thread.start()
    previous = {s: signal.signal(s, lambda signum, _: signals.note(signum)) for s in caught}
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    try:
        yield signals
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        signal.set_wakeup_fd(previous_fd)
        os.write(write_fd, b"\0")
        thread.join()
        os.close(read_fd)
        os.close(write_fd)
