"""Will a config fit? Per-device memory of every program a run compiles, before renting devices.

    python -m vinejax.tools.plan --config configs/gsm8k_rho1b_vineppo.py --devices 8 [--target v5e-8] \\
        [--mesh 1,8,1] [--hbm-gib 80] [--prompt-len 512] [--model-shape rho1b] \\
        [--phases generate,policy_step] [--no-search] [--cache plan_cache.json] [--json plan.json] \\
        [--config.ppo.micro_batch=32 ...]

Each program of the run (sampling, scoring, MC trajectory pass and chunk, policy / critic / SFT
update steps; `vinejax.planning.phases`) is lowered with abstract sharded arguments and compiled
ahead of time; no weight is loaded. It prints, per device, `compiled.memory_analysis()` (arguments,
outputs, temporaries, generated code) plus the state that stays beside each program, next to an
analytic breakdown (params, optimizer state, gradients, activations with / without remat, KV
cache), the largest `ppo.micro_batch` / `sft.micro_batch` / `sampling.batch_size` /
`vineppo.chunk_rows` that fit `--hbm-gib` (found by compiling), and a verdict.

Devices: `--target v5e-8` (any `planning.targets.TPU_SLICES` name) compiles for that TPU slice with
the TPU compiler, ahead of time, on a machine without TPUs (needs libtpu; `--devices` and
`--hbm-gib` default to the slice's): XLA's own TPU memory, what the slice would allocate. Otherwise,
when the machine's accelerators number `--devices`, the plan compiles for them; else for
`--devices` fake CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count, set here before
JAX starts). A CPU-compiled plan estimates an accelerator's memory: fusion and layouts differ.
The model shape comes without weights (`vinejax.planning.shapes`): the starting folder's
config.json, or a built-in paper shape. Lengths are the longest the config allows (prompts of
`task.max_prompt_tokens`; `--prompt-len` plans shorter ones). Exit status 0 when the config fits
as it is, 1 when it does not (the text says which setting or mesh would), 2 for bad input (a
config key, an argument; one line on stderr).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Optional, Sequence

from vinejax.planning.targets import TPU_SLICES, TargetError, tpu_devices, tpu_slice  # imports no JAX

FORCE = "--xla_force_host_platform_device_count"


def use_host_devices(count: int) -> None:
    """Ask XLA for `count` CPU devices, if JAX has not started yet (no effect once it has)."""
    if "jax" in sys.modules:
        return
    flags = re.sub(rf"{FORCE}=\d+", "", os.environ.get("XLA_FLAGS", ""))
    os.environ["XLA_FLAGS"] = f"{flags} {FORCE}={count}".strip()


def plan_devices(count: int) -> tuple[list, str]:
    """(devices, kind): the accelerators when there are exactly `count`, else `count` CPU devices."""
    import jax

    devices = jax.devices()
    if devices[0].platform != "cpu" and len(devices) == count:
        return devices, devices[0].device_kind
    cpu = jax.devices("cpu")
    if len(cpu) < count:
        raise SystemExit(f"--devices {count}: JAX already started with {len(cpu)} CPU devices; run "
                         f"`python -m vinejax.tools.plan` in a fresh process (it sets XLA_FLAGS={FORCE}={count})")
    return cpu[:count], "fake CPU"


def parse_mesh(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3 or not all(re.fullmatch(r"-?\d+", p.strip()) for p in parts):
        raise SystemExit(f"--mesh {text!r}: give data,fsdp,tensor sizes, e.g. 1,8,1 (-1 = the remaining devices)")
    return tuple(int(p) for p in parts)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns 0 when the config fits as it is, 1 when it does not."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                     epilog="--config FILE and --config.section.key=value as in experiments/run.py")
    parser.add_argument("--devices", type=int, default=0, help="number of devices to plan for (default: the target's)")
    parser.add_argument("--target", default="cpu",
                        help="cpu (fake CPU devices), or a TPU slice compiled by the TPU compiler: "
                             f"{', '.join(TPU_SLICES)}")
    parser.add_argument("--mesh", default="", help="data,fsdp,tensor (default: the config's mesh.shape)")
    parser.add_argument("--hbm-gib", type=float, default=0.0,
                        help="memory per device, GiB (default: the TPU slice's, else 80)")
    parser.add_argument("--prompt-len", type=int, default=0, help="longest prompt (default task.max_prompt_tokens)")
    parser.add_argument("--model-shape", default="",
                        help="a built-in shape (rho1b, deepseek7b, qwen3-1.7b, qwen3-8b) instead of the config's")
    parser.add_argument("--phases", default="", help="comma-separated phases to plan (default: all of the run's)")
    parser.add_argument("--no-search", action="store_true", help="only the configured sizes, no search")
    parser.add_argument("--max-compiles", type=int, default=4, help="compiles per phase when searching (default 4)")
    parser.add_argument("--cache", default="", help="JSON file caching compiled memory across runs")
    parser.add_argument("--json", default="", help="also write the plan as JSON to this file")
    args, rest = parser.parse_known_args(argv)
    tpu = None
    if args.target != "cpu":
        try:
            tpu = tpu_slice(args.target)
        except TargetError as error:
            raise SystemExit(str(error)) from None
    if args.devices < 1 and tpu is None:
        raise SystemExit("--devices must be >= 1 (or give a TPU --target)")
    hbm_gib = args.hbm_gib or (tpu.hbm_gib if tpu else 80.0)
    use_host_devices(args.devices or tpu.devices)  # a model without a shape is built on CPU devices

    from vinejax.config import ConfigError
    from vinejax.config_file import config_from_argv
    from vinejax.model.config import UnsupportedModelError
    from vinejax.planning.report import PlanOptions, format_plan, make_plan

    try:
        cfg, _, _, unknown = config_from_argv(rest)
    except ConfigError as error:
        raise SystemExit(str(error)) from None
    if unknown:
        raise SystemExit(f"unknown arguments: {' '.join(unknown)}")
    if args.mesh:
        cfg.mesh.shape = parse_mesh(args.mesh)
    try:
        devices, kind = tpu_devices(args.target) if tpu else plan_devices(args.devices)
    except TargetError as error:
        raise SystemExit(str(error)) from None
    if tpu and args.devices and args.devices != len(devices):
        raise SystemExit(f"--devices {args.devices}: the {args.target} slice has {len(devices)}")
    log = lambda line: print(line, file=sys.stderr, flush=True)
    try:
        options = PlanOptions(device_kind=kind, model_shape=args.model_shape or None, prompt_len=args.prompt_len or None,
                              only=args.phases.split(",") if args.phases else None, search=not args.no_search,
                              max_compiles=args.max_compiles, cache_path=args.cache or None)
        plan = make_plan(cfg, devices, int(hbm_gib * 2**30), options, log=log)
    except (ConfigError, UnsupportedModelError) as error:
        raise SystemExit(str(error)) from None
    print(format_plan(plan))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(plan, f, indent=1)
    return 0 if plan["fits"] else 1


def cli() -> int:
    """`main` as a command: exit status 0 fits, 1 does not fit, 2 bad input (one line on stderr)."""
    try:
        return main()
    except SystemExit as error:
        if not isinstance(error.code, str):
            raise
        print(f"error: {error.code}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
