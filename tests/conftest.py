"""Test setup: expose 8 fake CPU devices so mesh tests can run on one machine, compile fast
(`xla_flags.FAST_COMPILE`), and release compiled programs between test files.

Every program XLA's CPU backend compiles holds a few memory mappings until jax's caches drop it.
A pytest worker compiles thousands over the suite; at Linux's `vm.max_map_count` (65,530 by
default) the next mmap inside a compile fails and the worker dies with a segfault or an abort.

The flag must be set before jax is imported anywhere, hence at conftest import time.
"""
import os

from xla_flags import FAST_COMPILE  # noqa: E402  (tests/ is on sys.path: rootdir conftest)

flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    flags += " --xla_force_host_platform_device_count=8"
if "xla_backend_optimization_level" not in flags:
    flags += " " + FAST_COMPILE
os.environ["XLA_FLAGS"] = flags.strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import gc
import pathlib

import pytest

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """Path of ../shared/data; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


MAPS = pathlib.Path("/proc/self/maps")
MAPS_HIGH = 30_000  # half the default vm.max_map_count: clear before a test file can reach it


def _release_compiled() -> None:
    import jax

    jax.clear_caches()
    gc.collect()


@pytest.fixture(autouse=True, scope="module")
def release_compiled_per_file():
    """Drop every compiled program after each test file (few programs are shared across files)."""
    yield
    _release_compiled()


@pytest.fixture(autouse=True)
def release_compiled_when_maps_run_high():
    """Within a long test file, drop compiled programs once the process nears the mmap limit."""
    yield
    if MAPS.exists():
        with MAPS.open("rb") as f:
            if sum(1 for _ in f) > MAPS_HIGH:
                _release_compiled()
