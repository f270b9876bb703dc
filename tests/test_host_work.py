"""Host work on a worker thread: split_rows' pooled path gives the inline values, the work runs
while the main thread goes on (overlap) or before it does (overlap off), and waits are counted."""
import threading

import numpy as np

from vinejax.multihost import split_rows
from vinejax.train import host_work


def test_pooled_split_rows_equals_inline():
    values = np.arange(10, dtype=np.float32) ** 2
    fn = lambda lo, hi: values[lo:hi] + 1
    with host_work.session(True) as host:
        waiter = split_rows(fn, 10, host.pool)
        assert callable(waiter)
        np.testing.assert_array_equal(waiter(), split_rows(fn, 10))
    np.testing.assert_array_equal(split_rows(fn, 10), values + 1)
    assert split_rows(lambda lo, hi: np.zeros(hi - lo), 0).shape == (0,)


def test_work_runs_behind_the_main_thread_only_with_overlap():
    for overlap in (True, False):
        main_went_on = threading.Event()
        with host_work.session(overlap) as host:
            waiter = host.start(lambda: main_went_on.wait(timeout=0.3))  # True once the main thread went on
            main_went_on.set()
            saw_main = host.wait(waiter)
        assert saw_main == overlap
        assert host.idle_seconds >= (0.0 if overlap else 0.25)  # overlap off: the main thread waited it out
