"""Orbax `CheckpointManager` wrapper: the whole training state under one step number.

A checkpoint holds a pytree `state` (params, optimizer state(s), ...) and a JSON `meta` dict
(iteration, elapsed time). Orbax writes into a temporary folder and renames it when complete, so
a run killed mid-save resumes from the previous checkpoint. A save that fails raises
`CheckpointError` naming the folder and step (earlier checkpoints stay intact); a checkpoint that
cannot be restored is moved aside (never deleted) and the one before it is used. The folder may
be a bucket URL (`gs://...`): orbax writes the arrays through tensorstore's own client.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath

from vinejax import paths


class CheckpointError(RuntimeError):
    """A checkpoint could not be written."""


class Checkpointer:
    """Save / restore training state in `directory`, keeping the newest `keep` checkpoints."""

    def __init__(self, directory: str, keep: int = 3):
        self.directory = paths.display(directory)
        self.keep = keep
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True)
        return ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> Optional[int]:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """The steps of every complete checkpoint, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict, wait: bool = True) -> None:
        """Write `state` (pytree of arrays) and `meta` (JSON-able dict) as checkpoint `step`
        (replacing a checkpoint of that step: the same state, with later meta)."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        try:
            if step in self._manager.all_steps():
                self._manager.delete(step)
            self._manager.save(step, args=args, force=True)
            if wait:
                self._manager.wait_until_finished()
        except Exception as error:  # disk full, permissions, ...: name the place, keep the rest
            raise CheckpointError(f"could not save checkpoint {step} in {self.directory}: "
                                  f"{type(error).__name__}: {error}") from error

    def restore(self, step: int, target: Any) -> tuple[Any, dict]:
        """Restore checkpoint `step` into the structure, dtypes and shardings of `target`.

        `target` is a pytree of arrays or `jax.ShapeDtypeStruct`s (with `.sharding` to place
        each leaf directly on its devices).
        """
        abstract = jax.tree.map(_abstract, target)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        out = self._manager.restore(step, args=args)
        return out["state"], dict(out["meta"])

    def restore_part(self, step: int, key: Any, target: Any) -> tuple[Any, dict]:
        """Restore only `state[key]` of checkpoint `step` (a dict key or a sequence index, e.g.
        "params" of an RL `TrainState`, 0 of an SFT `(params, opt_state)`) into the structure,
        dtypes and shardings of `target`; the rest of the state is never read."""
        path = epath.Path(self.directory) / str(step) / "state"
        tree = ocp.PyTreeCheckpointHandler().metadata(path).tree
        template = jax.tree.map(lambda _: ocp.PLACEHOLDER, tree)
        template[key] = jax.tree.map(_abstract, target)
        restore_args = jax.tree.map(
            lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype)
            if isinstance(x, jax.ShapeDtypeStruct) else ocp.RestoreArgs(), template)
        args = ocp.args.Composite(state=ocp.args.PyTreeRestore(template, restore_args=restore_args),
                                  meta=ocp.args.JsonRestore())
        out = self._manager.restore(step, args=args)
        return out["state"][key], dict(out["meta"])

    def restore_latest(self, target: Any, warn: Callable[[str], None] = print) -> Optional[tuple[int, Any, dict]]:
        """(step, state, meta) of the newest checkpoint that restores, or None when there is none.

        A checkpoint that fails to restore (truncated or corrupted files) is reported through
        `warn`, moved to `<directory>.damaged/<step>` and skipped.
        """
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                return (step, *self.restore(step, target))
            except Exception as error:
                aside = os.path.join(self.directory + ".damaged", f"{step}-{int(time.time())}")
                self._manager.close()
                paths.move(os.path.join(self.directory, str(step)), aside)
                self._manager = self._open()
                warn(f"warning: checkpoint {step} in {self.directory} could not be restored "
                     f"({type(error).__name__}); moved to {aside}; trying the previous one")
        return None

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _abstract(x):
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
