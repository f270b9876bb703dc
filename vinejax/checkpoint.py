"""Orbax `CheckpointManager` wrapper: the whole training state under one step number.

A checkpoint holds a pytree `state` (params, optimizer state(s), RNG key data, ...) and a JSON
`meta` dict (iteration, data position, metrics so far). Orbax writes into a temporary folder and
renames it when complete, so a run killed mid-save resumes from the previous checkpoint.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Save / restore training state in `directory`, keeping the newest `keep` checkpoints."""

    def __init__(self, directory: str, keep: int = 3):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> Optional[int]:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict, wait: bool = True) -> None:
        """Write `state` (pytree of arrays) and `meta` (JSON-able dict) as checkpoint `step`."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self._manager.save(step, args=args, force=True)
        if wait:
            self._manager.wait_until_finished()

    def restore(self, step: int, target: Any) -> tuple[Any, dict]:
        """Restore checkpoint `step` into the structure, dtypes and shardings of `target`.

        `target` is a pytree of arrays or `jax.ShapeDtypeStruct`s (with `.sharding` to place
        each leaf directly on its devices).
        """
        abstract = jax.tree.map(_abstract, target)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        out = self._manager.restore(step, args=args)
        return out["state"], dict(out["meta"])

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _abstract(x):
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
