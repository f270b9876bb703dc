"""The files of a run directory besides checkpoints and metrics: the recorded config.json (kept,
compared on a re-run or resume), the done marker (done.json: a finished run's result), the HF
export (hf/), curves.png, and setting an earlier run aside when starting over. The directory may
be a bucket URL (`gs://...`): every file goes through `vinejax.paths`."""
from __future__ import annotations

import json
import os
import time
from typing import Optional

from vinejax import multihost, paths
from vinejax.config import ConfigError, to_dict
from vinejax.train.context import hf_folder_of_run
from vinejax.train.stage import log

# Settings a checkpoint cannot be resumed under: they change the state's shapes or meaning.
RESUME_CRITICAL = ("algo", "model.hf_path", "model.init_from", "model.tokenizer_path", "model.hidden_size",
                   "model.num_layers", "model.num_heads", "model.num_kv_heads", "model.intermediate_size",
                   "model.param_dtype", "task.name")
RUN_FILES = ("checkpoints", "metrics.jsonl", "samples.jsonl", "hf", "config.json", "done.json", "curves.png",
             "restem_data", "dpo_data.npz")  # what starting over sets aside


def checkpoint_dir(run: str) -> str:
    """Where a run keeps its orbax checkpoints."""
    return os.path.join(run, "checkpoints")


def done_path(run: str) -> str:
    """The done marker: written last, when a run has finished (its result, position and config)."""
    return os.path.join(run, "done.json")


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


def config_json(cfg) -> dict:
    """The config as its config.json records it."""
    return json.loads(json.dumps(to_dict(cfg), default=str))


def recorded_config(cfg) -> Optional[dict]:
    """The config.json of the run being resumed (None when there is none or `resume` is off).
    Refuses at once (before anything loads) to resume across a change of shape or algorithm.

    Every process reads it before any process writes (a barrier between), so all decide alike."""
    path = os.path.join(cfg.output_dir, "config.json")
    old = read_json(path) if cfg.resume and paths.exists(path, "output_dir") else None
    multihost.barrier("recorded config read")
    if old is not None:
        critical = [k for k, _, _ in config_changes(old, config_json(cfg)) if k in RESUME_CRITICAL]
        if critical and paths.exists(checkpoint_dir(cfg.output_dir)):
            raise ConfigError(f"config key {critical[0]!r} changed: {cfg.output_dir} cannot resume under it "
                              f"(use another output_dir, or --config.resume=false to start over)")
    return old


def read_json(path: str) -> dict:
    """A JSON file the run wrote; a ConfigError naming it when it is damaged."""
    try:
        return json.loads(paths.read_text(path))
    except ValueError as error:
        raise ConfigError(f"{path} is not valid JSON ({error}): repair or delete it, or start over with "
                          f"--config.resume=false") from None


def record_config(cfg, old: Optional[dict] = None) -> None:
    """Write the run's config.json (once the config, task and model have been checked). Beside a
    different recorded one (`old`, from `recorded_config`), keep it, say what differs and write
    the new one as config.<time>.json. With `resume` off, the earlier run is set aside first."""
    path = os.path.join(cfg.output_dir, "config.json")
    new = config_json(cfg)
    if old is not None:
        changes = config_changes(old, new)
        if not changes:
            return
        log(f"config differs from {paths.display(path)}: " + "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changes))
        path = os.path.join(cfg.output_dir, f"config.{time.strftime('%Y%m%d-%H%M%S')}.json")
    elif not cfg.resume:
        set_aside(cfg.output_dir)
    if multihost.is_main_process():
        paths.write_text(path, json.dumps(new, indent=1))
    multihost.barrier("run directory ready")  # process 0 may have moved an earlier run aside


def set_aside(output_dir: str) -> None:
    """Start over: move an earlier run's files into `previous-<time>/`."""
    old = [n for n in RUN_FILES if paths.exists(os.path.join(output_dir, n))]
    if old and multihost.is_main_process():
        aside = os.path.join(output_dir, f"previous-{time.strftime('%Y%m%d-%H%M%S')}")
        for name in old:
            paths.move(os.path.join(output_dir, name), os.path.join(aside, name))
        log(f"resume=false: the earlier run's files moved to {paths.display(aside)}")


def read_done(output_dir: str) -> Optional[dict]:
    """The done marker of a finished run, or None. (A run of an earlier vinejax: its SFT export's
    `hf/DONE` file; no result recorded.)"""
    path = done_path(output_dir)
    if paths.exists(path):
        return read_json(path)
    if paths.exists(os.path.join(hf_folder_of_run(output_dir), "DONE")):
        return {"summary": "(recorded by an earlier vinejax)", "result": {}, "config": None}
    return None


def mark_done(output_dir: str, info: dict) -> None:
    """Write the done marker (process 0)."""
    if multihost.is_main_process():
        paths.write_text(done_path(output_dir), json.dumps(info, indent=1))


def clear_done(output_dir: str) -> None:
    """A finished run continues (a larger config): it is not finished until it ends again."""
    multihost.barrier("done marker read")
    if multihost.is_main_process() and paths.exists(done_path(output_dir)):
        paths.remove(done_path(output_dir))


def export_policy(ctx, params) -> str:
    """Write `params` as the run's HF folder `hf/` (transformers loads it; the files the starting
    folder `ctx.source` keeps, e.g. generation_config.json, go with it); returns its path.

    Locally the folder is written beside and renamed into place, so `hf/` is always complete; a
    bucket gets the files of a local folder uploaded (every process joins the gathers, process 0
    writes)."""
    from vinejax.model.hf import save_hf_model

    target = hf_folder_of_run(ctx.cfg.output_dir)
    remote = paths.is_remote(target)
    with paths.staging_folder(target, "export") as staging:
        folder = staging if remote else target + ".partial"
        if multihost.is_main_process():
            paths.remove_tree(folder)
        save_hf_model(params, ctx.model_cfg, folder, tokenizer=ctx.tokenizer, source=ctx.source)
        if multihost.is_main_process():
            if remote:
                paths.upload_folder(folder, target, "output_dir")
            else:
                paths.remove_tree(target)
                os.replace(folder, target)
        multihost.barrier(f"export {target}")
    return paths.display(target)


def plot_curves(output_dir: str, records: list[dict]) -> None:
    """`curves.png` of the run's metrics records (nothing when there is nothing to draw)."""
    from vinejax.analysis.learning_curves import curves_png

    if records:
        paths.write_bytes(os.path.join(output_dir, "curves.png"),
                          curves_png([(os.path.basename(output_dir.rstrip("/")), records)]))
