"""Count XLA compilations in a block (instead of reading a jitted function's private cache)."""
import contextlib

from jax import monitoring

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compiles():
    """`with count_compiles() as n: ...`; afterwards `len(n)` is the number of backend compiles."""
    events = []

    def listener(name, seconds, **kwargs):
        if name == BACKEND_COMPILE:
            events.append(seconds)

    monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        monitoring.unregister_event_duration_listener(listener)
