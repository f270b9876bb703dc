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


def _plain(value):
    """JSON-able scalar from numpy/jax scalars; non-finite floats become strings."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsWriter:
    """Appends `{"iteration": i, "time": t, **metrics}` lines to `<dir>/metrics.jsonl`, and readable
    episodes to `<dir>/samples.jsonl`; mirrors both to TensorBoard (when tensorboardX is installed)
    and Weights & Biases (when `wandb.wandb_project` is set), under the same metric names."""

    def __init__(self, directory: str, filename: str = "metrics.jsonl", enabled: bool = True,
                 wandb=None, config: Optional[dict] = None):
        self.path = os.path.join(directory, filename)
        self.samples_path = os.path.join(directory, "samples.jsonl")
        self.enabled = enabled
        self._tb = None
        self._wandb = None
        if enabled:
            os.makedirs(directory, exist_ok=True)
            try:
                from tensorboardX import SummaryWriter  # optional

                self._tb = SummaryWriter(os.path.join(directory, "tensorboard"))
            except ImportError:
                self._tb = None
            if wandb is not None and wandb.wandb_project:
                self._wandb = _start_wandb(directory, wandb, config)

    def write(self, iteration: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"iteration": int(iteration), "time": time.time()}
        record.update({k: _plain(v) for k, v in metrics.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
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
        with open(self.samples_path, "a") as f:
            for s in samples:
                f.write(json.dumps({"iteration": int(iteration), **s}) + "\n")
        text = "\n\n".join(f"reward {s['reward']} ({s['finish']}), answer {s.get('answer')!r} vs gold {s['gold']!r}\n"
                            f"{s['response']}" for s in samples)
        if self._tb is not None:
            self._tb.add_text("samples", text, iteration)
        if self._wandb is not None:
            self._wandb.log({"samples": text}, step=int(iteration))

    def close(self) -> None:
        """Flush and close TensorBoard and W&B."""
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def truncate_after(self, iteration: int) -> None:
        """Drop lines past `iteration` (a resumed run rewrites what the killed run logged later)."""
        for path in (self.path, self.samples_path):
            if not (self.enabled and os.path.exists(path)):
                continue
            with open(path) as f:
                lines = [line for line in f if line.strip() and json.loads(line).get("iteration", -1) <= iteration]
            with open(path, "w") as f:
                f.writelines(lines)

    def num_records(self) -> int:
        """How many lines the file holds (0 when disabled or absent)."""
        if not (self.enabled and os.path.exists(self.path)):
            return 0
        with open(self.path) as f:
            return sum(1 for line in f if line.strip())

    def keep_first(self, count: int) -> None:
        """Keep only the first `count` lines (a resumed run rewrites the later ones)."""
        if not (self.enabled and os.path.exists(self.path)):
            return
        with open(self.path) as f:
            lines = [l for l in f if l.strip()][:count]
        with open(self.path, "w") as f:
            f.writelines(lines)


def _start_wandb(directory: str, settings, config: Optional[dict]):
    """A W&B run for `settings` (config section `logging`); WANDB_MODE=offline writes it locally."""
    try:
        import wandb
    except ImportError:
        from vinejax.config import ConfigError

        raise ConfigError("config key 'logging.wandb_project' is set but wandb is not installed: "
                          "pip install -e '.[wandb]'") from None
    return wandb.init(project=settings.wandb_project, entity=settings.wandb_entity or None,
                      name=settings.wandb_run_name or os.path.basename(os.path.abspath(directory)),
                      dir=directory, config=config, resume="allow")



def read_metrics(path: str) -> list[dict]:
    """All records of a metrics.jsonl file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def summary_line(iteration: int, m: dict, keys: Iterable[tuple[str, str]]) -> str:
    """'it 12 | reward 0.41 | ...' with the (label, key) pairs present in m."""
    parts = [f"it {iteration}"]
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
