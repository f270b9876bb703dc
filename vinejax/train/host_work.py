"""Host work (grading, step splitting) on one worker thread while the devices compute.

JAX dispatches device work asynchronously and a decode loop spends its host time waiting on the
devices, so grading and splitting a batch on a worker thread hides them behind the next device
phase. One worker: the graders are not thread-safe, and host work stays in order. Collectives
(`multihost.split_rows`' gather) run on the main thread, where every process issues them in the
same order.
"""
from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator


class HostWork:
    """Pieces of host work on `pool`'s thread. With `overlap` off each piece is waited for as soon
    as it starts (the devices idle meanwhile, as without a worker). `idle_seconds`: time the main
    thread spent waiting for host work, the devices idle (work that finished behind device work
    costs nothing)."""

    def __init__(self, pool: ThreadPoolExecutor, overlap: bool):
        self.pool, self.overlap, self.idle_seconds = pool, overlap, 0.0

    def start(self, fn: Callable, *args) -> Callable:
        """fn(*args) on the worker thread; returns the function that waits for its value."""
        return self.track(self.pool.submit(fn, *args).result)

    def track(self, result: Callable) -> Callable:
        """A waiter started elsewhere (e.g. `multihost.split_rows(..., pool=self.pool)`), waited for
        now when overlap is off."""
        if self.overlap:
            return result
        value = self.wait(result)
        return lambda: value

    def wait(self, result: Callable):
        """result(), its wait counted as device idle time."""
        start = time.perf_counter()
        try:
            return result()
        finally:
            self.idle_seconds += time.perf_counter() - start


@contextlib.contextmanager
def session(overlap: bool) -> Iterator[HostWork]:
    """A HostWork with its one-thread pool, shut down on exit."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vinejax-host") as pool:
        yield HostWork(pool, overlap)
