"""One runner for every training stage (SFT, RL, RestEM, DPO+).

A stage supplies its step and its metrics (`Stage`); the runner owns the rest, once for all:
resuming from the newest checkpoint (and rewinding the metrics files to it), the evaluation
cadence and `curves.png`, checkpoints, the time budget, preemption (`preemption`), the streak of
non-finite optimizer steps, the HF export and the done marker. Every stop decision is taken by
all processes together, at the same safe point (after a step, after an evaluation).

A stage's progress is a JSON dict it owns, saved in every checkpoint's meta. The runner reads
three keys: `position` (iterations or optimizer steps done: the evaluation and checkpoint
cadence), `gradient_steps` (optimizer steps so far, logged beside every line) and the optional
`checkpoint` (the checkpoint's number when it is not `position`, e.g. RestEM's several per
iteration).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Protocol, Sequence

from vinejax import multihost, paths
from vinejax.checkpoint import Checkpointer, CheckpointError
from vinejax.train import run_dir
from vinejax.train.metrics import MetricsWriter, RunClock, plain, summary_line
from vinejax.train.preemption import EXIT_PREEMPTED, Preempted, Signals
from vinejax.train.stage import RunError, log, save_checked
from vinejax.train.update import all_finite


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What one step of a stage did."""

    state: Any  # the stage's state after the step (what a checkpoint holds)
    progress: dict  # where the stage stands after it
    metrics: dict = dataclasses.field(default_factory=dict)  # one metrics.jsonl line ({}: none)
    at: int = 0  # the line's "iteration" field
    samples: Sequence[dict] = ()  # readable episodes for samples.jsonl
    nonfinite: Sequence[bool] = ()  # per optimizer step: skipped for a non-finite loss or gradient
    save: bool = False  # checkpoint after this step whatever the cadence


class Stage(Protocol):
    """A training stage as the runner drives it."""

    unit: str  # what `position` counts, in messages: "iteration" or "step"
    label: str  # prefix of its console lines ("it", "sft step")
    summary_keys: tuple  # (label, metric key) pairs of its console lines
    eval_every: Optional[int]  # evaluate at positions 0, k, 2k, ... and at the end; 0: at the end; None: never
    checkpoint_every: int  # checkpoint at positions k, 2k, ... (0: only when a step asks) and at the end

    def initial_state(self) -> Any: ...  # the state before any step (also the restore target)
    def initial_progress(self) -> dict: ...
    def done(self, progress: dict) -> bool: ...
    def step(self, state, progress: dict) -> StepResult: ...
    def evaluate(self, state, progress: dict) -> dict: ...  # held-out metrics of the current policy
    def policy(self, state) -> Any: ...  # the params to export


def report_finished(output_dir: str, finished: dict) -> dict:
    """Say that the run in `output_dir` has finished (its done marker `finished`); its result."""
    log(f"finished earlier: {finished.get('summary', '')} ({paths.display(run_dir.done_path(output_dir))}); "
        f"a larger train.iterations (or sft.max_steps) continues it, --config.resume=false starts over")
    return finished.get("result", {})


class StageRunner:
    """Drives one stage from its newest checkpoint to its end (`run`)."""

    def __init__(self, ctx, stage: Stage, writer: MetricsWriter, signals: Signals):
        self.ctx, self.stage, self.writer, self.signals = ctx, stage, writer, signals
        cfg = ctx.cfg
        self.ckpt = Checkpointer(run_dir.checkpoint_dir(cfg.output_dir), cfg.train.keep_checkpoints)
        self.state = stage.initial_state()
        meta = self._resume() if cfg.resume else {}
        self.rewind_to = {k: meta.get(k, 0) for k in ("records", "sample_records")}  # the files' lines at the save
        self.progress = meta.get("progress") or stage.initial_progress()
        self.evaluated = meta.get("evaluated", False)  # the current position has been evaluated
        self.result = meta.get("result", {})  # the newest line written: the run's result at its end
        self.clock = RunClock(meta)  # wall-clock and CPU seconds of the run, across resumes
        self.saved = True  # nothing done since the newest checkpoint (or the start)
        self.streak = 0  # non-finite optimizer steps in a row
        self.over_budget = False

    def _resume(self) -> dict:
        found = self.ckpt.restore_latest(self.state, warn=log)
        if found is None:
            return {}
        step, self.state, meta = found
        if "progress" not in meta:
            raise CheckpointError(f"checkpoint {step} in {self.ckpt.directory} was written by an older vinejax: "
                                  f"finish the run with that version, or start over with --config.resume=false")
        log(f"resumed from checkpoint {step} in {self.ckpt.directory}")
        return meta

    @property
    def position(self) -> int:
        return self.progress["position"]

    def run(self) -> dict:
        """Steps until the stage is done or the time budget is spent, the final evaluation, the
        export and the done marker; returns the last metrics line. Raises `Preempted` when
        stopped by a signal (after saving a checkpoint)."""
        self.safe_point()  # a signal during setup: stop before any work
        self.over_budget = self.budget_spent()
        finished = run_dir.read_done(self.ctx.cfg.output_dir) if self.ctx.cfg.resume else None
        if finished is not None and (self.over_budget or self.stage.done(self.progress)):
            return report_finished(self.ctx.cfg.output_dir, finished)  # nothing to add: no evaluation, no export
        if finished is not None:
            run_dir.clear_done(self.ctx.cfg.output_dir)  # a larger config continues the run
        self.writer.rewind(self.rewind_to)  # lines written after the checkpoint are written again
        while not self.stage.done(self.progress) and not self.over_budget:
            if self.eval_due():
                self.evaluate()
            self.step()
        if self.over_budget:
            log(f"time budget of {self.ctx.cfg.train.time_budget_minutes} min reached at {self.stage.unit} "
                f"{self.position}")
        if self.stage.eval_every is not None and not self.evaluated:
            self.evaluate()
        self.ckpt.close()
        self.export()
        return self.finish()

    def eval_due(self) -> bool:
        every = self.stage.eval_every
        return bool(every) and self.position % every == 0 and not self.evaluated

    def line(self, at: int, metrics: dict) -> dict:
        """Write one metrics line (the run's clock and gradient steps added) and its console line."""
        metrics = metrics | self.clock.as_metrics() | {"train/gradient_steps": self.progress["gradient_steps"]}
        self.writer.write(at, metrics)
        log(summary_line(at, metrics, self.stage.summary_keys, self.stage.label))
        self.result = plain(metrics)
        return metrics

    def evaluate(self) -> None:
        self.line(self.position, self.stage.evaluate(self.state, self.progress))
        self.evaluated, self.saved = True, False
        self.plot_curves()
        self.safe_point()

    def step(self) -> None:
        before = self.position
        out = self.stage.step(self.state, self.progress)
        self.state, self.progress, self.saved = out.state, out.progress, False
        advanced = self.position != before
        self.evaluated = self.evaluated and not advanced
        if out.metrics:
            self.line(out.at, out.metrics)
        self.writer.write_samples(out.at, list(out.samples))
        self.check_finite(out.nonfinite, out.at)
        self.over_budget = self.budget_spent()
        every = self.stage.checkpoint_every
        if (out.save or (advanced and every > 0 and self.position % every == 0) or self.over_budget
                or self.stage.done(self.progress)):
            self.save()
        self.safe_point()

    def check_finite(self, flags: Sequence[bool], at: int) -> None:
        """A skipped step changed nothing; `train.max_nonfinite_steps` in a row stop the run."""
        limit = self.ctx.cfg.train.max_nonfinite_steps
        for flag in flags:
            self.streak = self.streak + 1 if flag else 0
            if self.streak >= limit:
                raise RunError(f"{self.stage.unit} {at}: {self.streak} optimizer steps in a row had a non-finite loss "
                               f"or gradient (train.max_nonfinite_steps {limit}); the last good checkpoint is "
                               f"{self.ckpt.latest_step()} in {self.ckpt.directory}")

    def budget_spent(self) -> bool:
        """Process 0's clock decides for every process."""
        minutes = self.ctx.cfg.train.time_budget_minutes
        return multihost.main_decides(minutes > 0 and self.clock.elapsed() > 60 * minutes)

    def save(self) -> None:
        self.writer.flush()
        meta = {"progress": self.progress, "evaluated": self.evaluated, "result": self.result}
        save_checked(self.ckpt, self.progress.get("checkpoint", self.position), self.state,
                     meta | self.writer.position() | self.clock.as_meta())
        self.saved = True

    def safe_point(self) -> None:
        """Stop here when a stop was requested (on every process at the same point): save the
        work done, say so in one line, raise `Preempted`."""
        if not self.signals.stop_now():
            return
        if not self.saved:
            self.save()
        self.ckpt.close()
        self.writer.flush()
        latest = self.ckpt.latest_step()
        saved = f"checkpoint {latest} in {self.ckpt.directory}" if latest is not None else "no checkpoint yet"
        message = (f"preempted ({self.signals.describe()}): stopped at {self.stage.unit} {self.position} with "
                   f"{saved}; run the same command again to continue (exit {EXIT_PREEMPTED})")
        log(message)
        raise Preempted(message)

    def export(self) -> None:
        cfg = self.ctx.cfg
        if not cfg.train.export_hf:
            return
        params = self.stage.policy(self.state)
        if not bool(all_finite(params)):
            raise RunError(f"non-finite parameters at {self.stage.unit} {self.position}: not exported")
        folder = run_dir.export_policy(self.ctx, params)
        log(f"policy exported to {folder}")

    def finish(self) -> dict:
        summary = summary_line(self.position, self.result, self.stage.summary_keys, self.stage.label)
        cfg = self.ctx.cfg
        run_dir.mark_done(cfg.output_dir, {"position": self.position, "unit": self.stage.unit, "summary": summary,
                                           "result": self.result, "config": run_dir.config_json(cfg)})
        self.plot_curves()
        self.writer.flush()
        log(f"metrics: {paths.display(self.writer.path)}; checkpoints: {self.ckpt.directory}")
        return self.result

    def plot_curves(self) -> None:
        """`curves.png` of the run so far (process 0)."""
        if multihost.is_main_process():
            run_dir.plot_curves(self.ctx.cfg.output_dir, self.writer.records())
