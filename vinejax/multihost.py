"""Several processes, one program (JAX's multi-controller runtime, `jax.distributed`).

Every process runs the same Python program on its own host and its own local devices; a `Mesh`
spans the devices of all processes and `jax.jit` runs one SPMD program over it. vinejax keeps one
rule: every process derives the same host data (problems, RNG keys, sampled episodes, rewards),
so host arrays are global values that each process places only on its own devices
(`put_global`), and device results are gathered back to every host (`to_host`). Host work that
may differ between hosts or is worth splitting (grading) is split by rows and gathered
(`split_rows`, optionally on a worker thread while the devices compute).
`assert_same_on_all_processes` checks the rule once per iteration.
With one process every function here is the ordinary single-process path.
"""
from __future__ import annotations

import zlib

import jax
import numpy as np
from jax.experimental import multihost_utils


def initialize(mesh_cfg) -> None:
    """`jax.distributed.initialize` when `mesh_cfg.distributed` (once; before any JAX computation).

    Unset keys (coordinator_address "", num_processes 0, process_id -1) are left to JAX, which
    detects them on Cloud TPU, SLURM, Open MPI and Kubernetes (and reads JAX_COORDINATOR_ADDRESS).
    """
    if not mesh_cfg.distributed or jax.distributed.is_initialized():
        return
    given = dict(coordinator_address=mesh_cfg.coordinator_address or None,
                 num_processes=mesh_cfg.num_processes if mesh_cfg.num_processes > 0 else None,
                 process_id=mesh_cfg.process_id if mesh_cfg.process_id >= 0 else None)
    jax.distributed.initialize(**{k: v for k, v in given.items() if v is not None})


def is_main_process() -> bool:
    """True on the process that writes files and prints (process 0)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def main_decides(flag: bool) -> bool:
    """Process 0's `flag` on every process: for decisions each host would otherwise take on its
    own (e.g. from its clock) and that every process must take together."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is True on any of them (one tiny all-gather)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.asarray(multihost_utils.process_allgather(np.int32(flag))).any())


def put_global(x, sharding) -> jax.Array:
    """The host array `x` (the same value on every process) as a jax.Array laid out by `sharding`.

    Each process copies only the shards its own devices hold; unlike `jax.device_put` nothing
    crosses processes (no equality check), so the caller guarantees the value is the same.
    """
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def place(tree, shardings):
    """Every leaf of `tree` laid out by the matching leaf of `shardings`.

    With several processes, a leaf on this process's devices only (e.g. eager `init_params` on the
    default device; the same value on every process) goes through the host to `put_global`;
    arrays already spanning the processes are resharded by `jax.device_put`.
    """

    def put(x, s):
        if jax.process_count() == 1 or (isinstance(x, jax.Array) and not x.is_fully_addressable):
            return jax.device_put(x, s)
        return put_global(jax.device_get(x), s)

    return jax.tree.map(put, tree, shardings)


def to_host(tree):
    """Numpy copy of every leaf on every process; arrays spanning several processes are gathered."""

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(get, tree)


@jax.jit
def _row(x, i):
    return x[i]


def to_host_by_rows(x) -> np.ndarray:
    """`to_host(x)` one index of the leading axis at a time, for arrays spanning processes: the
    gather then replicates one row (e.g. one layer) on every device, not the whole array."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
        return to_host(x)
    return np.stack([to_host(_row(x, i)) for i in range(x.shape[0])])


def split_rows(fn, rows: int, pool=None):
    """f32[rows] = concat of fn(lo, hi) -> f32[hi - lo], each process computing one contiguous share.

    The shares are gathered on every process, so each row is computed once and all processes get
    the same values even when `fn` is not deterministic (e.g. grading with timeouts). `fn` must
    accept an empty range.

    With `pool` (a `concurrent.futures` executor) this process's share runs there and the call
    returns at once with a function that waits for it and gathers the shares: call that one from
    the main thread, where every process issues its collectives in the same order.
    """
    count, index = jax.process_count(), jax.process_index()
    share = -(-rows // count)
    lo, hi = min(index * share, rows), min((index + 1) * share, rows)

    def compute() -> np.ndarray:  # f32[share]: this process's rows, zero-padded
        mine = np.zeros((share,), np.float32)
        mine[: hi - lo] = np.asarray(fn(lo, hi), np.float32).reshape(hi - lo)
        return mine

    def gather(mine: np.ndarray) -> np.ndarray:
        if count == 1:
            return mine
        every = np.asarray(multihost_utils.process_allgather(mine))  # [processes, share]
        return every.reshape(-1)[:rows]

    if pool is None:
        return gather(compute())
    future = pool.submit(compute)
    return lambda: gather(future.result())


def fingerprint(tree) -> int:
    """CRC32 of the bytes, shapes and dtypes of every leaf of a tree of host arrays."""
    crc = 0
    for leaf in jax.tree.leaves(tree):
        a = np.ascontiguousarray(leaf)
        crc = zlib.crc32(f"{a.shape}{a.dtype}".encode(), crc)
        crc = zlib.crc32(a.tobytes(), crc)
    return crc


def assert_same_on_all_processes(name: str, tree) -> None:
    """Raise RuntimeError naming `name` when the host data `tree` differs between processes.

    Compares one CRC32 per process (a tiny all-gather), not the data itself.
    """
    if jax.process_count() == 1:
        return
    mine = np.array([fingerprint(tree)], np.uint32)
    every = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1)
    if np.any(every != every[0]):
        raise RuntimeError(f"{name} differs between processes (CRC32 per process: {every.tolist()}); "
                           "every process must derive the same problems, samples and rewards")
