"""What the RL-free baselines (RestEM, DPO+) train on: the graded samples of one round, kept as
variable-length token rows and saved to disk once, so a resumed run trains on the same data
without sampling again."""
from __future__ import annotations

import dataclasses
import io

import jax
import numpy as np
from etils import epath

from vinejax import paths
from vinejax.train import encode
from vinejax.train.episodes import Episodes, grade_episodes, sample_episodes
from vinejax.train.metrics import describe


def sample_and_grade(ctx, params, problems: list, rng: jax.Array, desc: str = "sample") -> tuple[Episodes, np.ndarray, dict]:
    """`sampling.samples_per_problem` responses to each problem at the sampling settings, their
    rewards f32[B] (0 when cut by the length limit) and the round's metrics."""
    ep = sample_episodes(ctx.rollout(params), problems, ctx.cfg.sampling.samples_per_problem, rng, desc)
    rewards, grade_errors = grade_episodes(ctx.task, ep, ctx.cfg.task.grade_workers)  # f32[B]
    metrics = {"rewards/mean": float(rewards.mean()), "rewards/grade_errors": float(grade_errors),
               "generation/finished_frac": float(ep.finished.mean())}
    return ep, rewards, metrics | describe("generation/length", ep.total_lens - ep.prompt_lens)


@dataclasses.dataclass(frozen=True)
class TokenRows:
    """N rows of prompt + response tokens stored back to back (no padding)."""

    flat: np.ndarray  # int32[sum(total_lens)]
    prompt_lens: np.ndarray  # int32[N]
    total_lens: np.ndarray  # int32[N]

    @classmethod
    def from_episodes(cls, ep: Episodes, rows: np.ndarray) -> "TokenRows":
        """The episodes `rows` (int[N] indices into `ep`), in that order."""
        rows = np.asarray(rows, np.int64)
        parts = [ep.tokens[r, : ep.total_lens[r]] for r in rows]
        flat = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        return cls(flat.astype(np.int32), ep.prompt_lens[rows].astype(np.int32), ep.total_lens[rows].astype(np.int32))

    def __len__(self) -> int:
        return len(self.total_lens)

    def batch(self, idx: np.ndarray, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows `idx` right-padded to a length bucket: tokens int32[b, T], response mask bool[b, T]."""
        idx = np.asarray(idx, np.int64)
        starts = np.concatenate([[0], np.cumsum(self.total_lens)])[idx]
        rows = [self.flat[s : s + n] for s, n in zip(starts, self.total_lens[idx])]
        width = encode.length_bucket(int(self.total_lens[idx].max()))
        col = np.arange(width)[None]
        mask = (col >= self.prompt_lens[idx, None]) & (col < self.total_lens[idx, None])
        return encode.pad_rows(rows, width, pad_id), mask

    def arrays(self, prefix: str) -> dict:
        """The fields as `{prefix + name: array}` (for `save_arrays`)."""
        return {prefix + f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_arrays(cls, arrays: dict, prefix: str) -> "TokenRows":
        return cls(**{f.name: arrays[prefix + f.name] for f in dataclasses.fields(cls)})


def save_arrays(path: str, arrays: dict) -> None:
    """Write `{name: array}` to an .npz file at once (process 0 only; the run directory is shared:
    a shared file system or a bucket)."""
    if jax.process_index() != 0:
        return
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    paths.write_bytes(path, buffer.getvalue())


def load_arrays(path: str) -> dict:
    """`{name: array}` from a file written by `save_arrays`."""
    if not paths.exists(path):
        raise FileNotFoundError(f"training data of the resumed round not found: {path}")
    with np.load(io.BytesIO(epath.Path(path).read_bytes())) as f:
        return {k: f[k] for k in f.files}
