"""Observability: metrics to JSONL (always) and TensorBoard (when tensorboardX is installed),
a one-line iteration summary, and progress bars that stay quiet off a terminal."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import contextmanager
from typing import Iterable, Optional

import jax
import numpy as np
from etils import epath

from vinejax import paths


def _plain(value):
    """JSON-able scalar from numpy/jax scalars; non-finite floats become strings."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def plain(metrics: dict) -> dict:
    """`metrics` with JSON-able values (numpy and jax scalars as Python numbers)."""
    return {k: _plain(v) for k, v in metrics.items()}


class JsonLines:
    """The lines of one JSONL file, held in memory: a local file gets each line appended at once,
    a remote one (`gs://...`: objects cannot be appended to) is rewritten whole at `flush`."""

    def __init__(self, path: str, enabled: bool):
        self.path, self.enabled, self.remote, self.dirty = path, enabled, paths.is_remote(path), False
        self.lines: list[str] = []
        if enabled and paths.exists(path):
            raw = [line for line in paths.read_text(path).splitlines() if line.strip()]
            self.lines = [line + "\n" for line in raw if _is_record(line)]
            if len(self.lines) < len(raw):  # a partial last line of a killed run: rewrite without it
                self.dirty = True
                self.flush()

    def append(self, record: dict) -> None:
        if not self.enabled:
            return
        line = json.dumps(record) + "\n"
        self.lines.append(line)
        if self.remote:
            self.dirty = True
        else:
            with open(self.path, "a") as f:
                f.write(line)

    def keep_first(self, count: int) -> None:
        """Keep the first `count` lines (the file is rewritten)."""
        if self.enabled and count < len(self.lines):
            self.lines = self.lines[:count]
            self.dirty = True
            self.flush()

    def flush(self) -> None:
        if self.enabled and self.dirty:
            paths.write_text(self.path, "".join(self.lines))
            self.dirty = False


def _is_record(line: str) -> bool:
    """A complete JSON line (a run killed mid-write may leave a partial last line)."""
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


class MetricsWriter:
    """Appends `{"iteration": i, "time": t, **metrics}` lines to `<dir>/metrics.jsonl`, and readable
    episodes to `<dir>/samples.jsonl`; mirrors both to TensorBoard (when tensorboardX is installed
    and `<dir>` is local) and Weights & Biases (when `wandb.wandb_project` is set), under the same
    metric names. `<dir>` may be a bucket URL: its files are then written at each `flush`."""

    def __init__(self, directory: str, filename: str = "metrics.jsonl", enabled: bool = True,
                 wandb=None, config: Optional[dict] = None):
        self.path = os.path.join(directory, filename)
        self.samples_path = os.path.join(directory, "samples.jsonl")
        self.enabled = enabled
        self._tb = None
        self._wandb = None
        if enabled:
            epath.Path(directory).mkdir(parents=True, exist_ok=True)
            if not paths.is_remote(directory):
                try:
                    from tensorboardX import SummaryWriter  # optional

                    self._tb = SummaryWriter(os.path.join(directory, "tensorboard"))
                except ImportError:
                    self._tb = None
            if wandb is not None and wandb.wandb_project:
                self._wandb = _start_wandb(directory, wandb, config)
        self._metrics = JsonLines(self.path, enabled)
        self._samples = JsonLines(self.samples_path, enabled)

    def write(self, iteration: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"iteration": int(iteration), "time": time.time()}
        record.update({k: _plain(v) for k, v in metrics.items()})
        self._metrics.append(record)
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k not in ("iteration", "time")}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, iteration)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=int(iteration))

    def write_samples(self, iteration: int, samples: list[dict]) -> None:
        """Append readable episodes (`train.samples.sample_records`) to samples.jsonl (and as text)."""
        if not (self.enabled and samples):
            return
        for s in samples:
            self._samples.append({"iteration": int(iteration), **s})
        text = "\n\n".join(f"reward {s['reward']} ({s['finish']}), answer {s.get('answer')!r} vs gold {s['gold']!r}\n"
                            f"{s['response']}" for s in samples)
        if self._tb is not None:
            self._tb.add_text("samples", text, iteration)
        if self._wandb is not None:
            self._wandb.log({"samples": text}, step=int(iteration))

    def records(self) -> list[dict]:
        """Every metrics record written so far (those of earlier attempts included)."""
        return [json.loads(line) for line in self._metrics.lines]

    def position(self) -> dict:
        """How many lines each file holds: saved with a checkpoint, for `rewind` on resume."""
        return {"records": len(self._metrics.lines), "sample_records": len(self._samples.lines)}

    def rewind(self, position: dict) -> None:
        """Keep the lines written up to `position` (a resumed run writes the later ones again)."""
        self._metrics.keep_first(position.get("records", 0))
        self._samples.keep_first(position.get("sample_records", 0))

    def flush(self) -> None:
        """Write what a remote file has not received yet (local lines are written at once)."""
        self._metrics.flush()
        self._samples.flush()

    def close(self) -> None:
        """Flush; close TensorBoard and W&B."""
        self.flush()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _start_wandb(directory: str, settings, config: Optional[dict]):
    """A W&B run for `settings` (config section `logging`); WANDB_MODE=offline writes it locally."""
    try:
        import wandb
    except ImportError:
        from vinejax.config import ConfigError

        raise ConfigError("config key 'logging.wandb_project' is set but wandb is not installed: "
                          "pip install -e '.[wandb]'") from None
    return wandb.init(project=settings.wandb_project, entity=settings.wandb_entity or None,
                      name=settings.wandb_run_name or os.path.basename(paths.display(directory).rstrip("/")),
                      dir=None if paths.is_remote(directory) else directory, config=config, resume="allow")



def read_metrics(path: str) -> list[dict]:
    """All records of a metrics.jsonl file (local or remote)."""
    return [json.loads(line) for line in paths.read_text(path).splitlines() if line.strip()]


def summary_line(iteration: int, m: dict, keys: Iterable[tuple[str, str]], label: str = "it") -> str:
    """'it 12 | reward 0.41 | ...' with the (label, key) pairs present in m."""
    parts = [f"{label} {iteration}"]
    for label, key in keys:
        if key in m:
            v = _plain(m[key])
            parts.append(f"{label} {v:.4g}" if isinstance(v, float) else f"{label} {v}")
    return " | ".join(parts)


def progress(iterable=None, total: Optional[int] = None, desc: str = ""):
    """tqdm progress bar on a terminal (process 0 only), a plain iterable otherwise."""
    if not sys.stderr.isatty() or jax.process_index() != 0:
        return iterable if iterable is not None else _NullBar()
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


class _NullBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


class RunClock:
    """Seconds a run has used, carried across resumes through the checkpoint meta: wall-clock
    (`time/elapsed`) and this process's CPU time, all threads, user + system (`time/cpu`: a fairer
    clock than wall-clock on a machine shared with other jobs)."""

    def __init__(self, saved: Optional[dict] = None):
        saved = saved or {}
        self.wall_start = time.time() - saved.get("elapsed", 0.0)
        self.cpu_start = time.process_time() - saved.get("cpu", 0.0)

    def elapsed(self) -> float:
        return time.time() - self.wall_start

    def cpu(self) -> float:
        return time.process_time() - self.cpu_start

    def as_metrics(self) -> dict:
        return {"time/elapsed": self.elapsed(), "time/cpu": self.cpu()}

    def as_meta(self) -> dict:
        """What a checkpoint's meta keeps so that a resumed run's clock continues."""
        return {"elapsed": self.elapsed(), "cpu": self.cpu()}


class Timer:
    """Accumulates wall-clock seconds per named phase: `with timer("sample"): ...`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def as_metrics(self, prefix: str = "time/") -> dict:
        return {prefix + k: v for k, v in self.seconds.items()}


def describe(prefix: str, values: np.ndarray, mask: Optional[np.ndarray] = None) -> dict:
    """{prefix/mean, /std, /min, /max} over the masked values."""
    v = np.asarray(values, np.float64)
    if mask is not None:
        v = v[np.asarray(mask, bool)]
    if v.size == 0:
        return {}
    return {f"{prefix}/mean": v.mean(), f"{prefix}/std": v.std(), f"{prefix}/min": v.min(), f"{prefix}/max": v.max()}
