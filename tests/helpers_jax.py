"""JAX test utilities that use only public APIs."""
from __future__ import annotations

import collections
import contextlib

import jax

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compiles():
    """Count XLA compilations inside the block, per jitted function name (e.g. 'jit(f)').

    Listens to `jax.monitoring` backend-compile events, so cache hits are not counted:

        with helpers_jax.count_compiles() as compiles:
            f(x)
        assert compiles["jit(f)"] == 1
    """
    counts: collections.Counter = collections.Counter()

    def listener(event, duration, **kwargs):
        if event == BACKEND_COMPILE_EVENT:
            counts[kwargs.get("fun_name", "?")] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield counts
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
