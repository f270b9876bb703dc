"""Host arrays → device micro-batches [M, mb, ...] sharded over the mesh's data axes.

The host arrays are the same on every process (see `vinejax.multihost`): each process places
only the rows its own devices hold, so this works for meshes spanning several processes.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vinejax import sharding
from vinejax.multihost import put_global


def _microbatch_sharding(mesh, ndim: int) -> NamedSharding:
    """[M, mb, ...]: the micro-batch axis (1) over the data axes, the rest replicated."""
    spec = sharding.batch_sharding(mesh, ndim - 1).spec
    return NamedSharding(mesh, P(None, *spec))


def to_microbatches(mesh, tree, micro_batch: int):
    """Reshape every [B, ...] leaf to [B // micro_batch, micro_batch, ...] and place it on the mesh."""

    def put(x):
        x = np.asarray(x)
        if x.shape[0] % micro_batch:
            raise ValueError(f"batch of {x.shape[0]} rows is not divisible by micro_batch={micro_batch}")
        x = x.reshape((x.shape[0] // micro_batch, micro_batch) + x.shape[1:])
        return put_global(x, _microbatch_sharding(mesh, x.ndim))

    return jax.tree.map(put, tree)


def to_device_batch(mesh, tree):
    """Place every [B, ...] leaf with its batch axis over the data axes of `mesh`."""
    return jax.tree.map(lambda x: put_global(x, sharding.batch_sharding(mesh, np.ndim(x))), tree)
