"""The files of a run directory besides checkpoints and metrics: the recorded config.json (kept,
compared on a re-run or resume) and setting an earlier run aside when starting over."""
from __future__ import annotations

import json
import os
import time

from vinejax import multihost
from vinejax.config import ConfigError, to_dict
from vinejax.train.stage import log

# Settings a checkpoint cannot be resumed under: they change the state's shapes or meaning.
RESUME_CRITICAL = ("algo", "model.hf_path", "model.init_from", "model.tokenizer_path", "model.hidden_size",
                   "model.num_layers", "model.num_heads", "model.num_kv_heads", "model.intermediate_size",
                   "model.param_dtype", "task.name")


def config_changes(old: dict, new: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """[(dotted key, old value, new value)] where two nested config dicts differ."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{prefix}{key}.")
        elif json.dumps(a, default=str) != json.dumps(b, default=str):
            out.append((prefix + key, a, b))
    return out


def record_config(cfg) -> None:
    """Write the run's config.json; when one exists (a resume or a re-run) keep it, say what
    differs, write the new one beside it, and refuse to resume across a change of shape or algorithm.

    Every process reads the recorded config before process 0 writes anything (a barrier between),
    so all take the same decision; the write is atomic (a temporary file renamed into place).
    """
    path = os.path.join(cfg.output_dir, "config.json")
    new = json.loads(json.dumps(to_dict(cfg), default=str))
    old = None
    if cfg.resume and os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
    multihost.barrier("recorded config read")
    if old is not None:
        changes = config_changes(old, new)
        if not changes:
            return
        log("config differs from " + path + ": " + "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changes))
        critical = [k for k, _, _ in changes if k in RESUME_CRITICAL]
        if critical and os.path.isdir(os.path.join(cfg.output_dir, "checkpoints")):
            raise ConfigError(f"config key {critical[0]!r} changed: {cfg.output_dir} cannot resume under it "
                              f"(use another output_dir, or --config.resume=false to start over)")
        path = os.path.join(cfg.output_dir, f"config.{time.strftime('%Y%m%d-%H%M%S')}.json")
    elif not cfg.resume:
        set_aside(cfg.output_dir)
    if multihost.is_main_process():
        with open(path + ".tmp", "w") as f:
            json.dump(new, f, indent=1)
        os.replace(path + ".tmp", path)


def set_aside(output_dir: str) -> None:
    """Start over: move an earlier run's checkpoints, metrics and export into `previous-<time>/`."""
    old = [n for n in ("checkpoints", "metrics.jsonl", "samples.jsonl", "hf", "config.json")
           if os.path.exists(os.path.join(output_dir, n))]
    if old and multihost.is_main_process():
        aside = os.path.join(output_dir, f"previous-{time.strftime('%Y%m%d-%H%M%S')}")
        os.makedirs(aside)
        for name in old:
            os.rename(os.path.join(output_dir, name), os.path.join(aside, name))
        log(f"resume=false: the earlier run's files moved to {aside}")
