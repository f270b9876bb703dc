"""Memory plans of the 12 paper configs and the Qwen3 ones on three machines (the "Memory plans" of
docs/scaling.md).

    python experiments/plan_paper.py [--hardware gpu8x80,v4-8,v5e-8] [--configs gsm8k_rho1b_sft,...] \\
        [--mesh 1,4,2] [--devices 16] [--set model.param_dtype=bfloat16] [--tpu-compiler] \\
        [--out docs/memory_plans.json] [--cache /tmp/plan_cache.json] [--max-compiles 3]
    python experiments/plan_paper.py --markdown docs/memory_plans.json      # the doc's tables

Every plan is `vinejax.planning.report.make_plan` (what `python -m vinejax.tools.plan` prints), on 8
fake CPU devices (4 of them for the v4-8), or, with `--tpu-compiler`, the TPU machines' programs
compiled by the TPU compiler for their slice (`vinejax.planning.targets`; PYTHONPATH=.libtpu). Plans already in `--out` are kept (a rerun continues);
each new one is added as soon as it is done.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from vinejax.tools.plan import use_host_devices  # noqa: E402  (imports no JAX)

HARDWARE = {  # name: (devices, GiB per device, words)
    "gpu8x80": (8, 80.0, "8 GPUs of 80 GiB (A100 / H100 80GB)"),
    "v4-8": (4, 32.0, "TPU v4-8: 4 chips of 32 GiB"),
    "v5e-8": (8, 16.0, "TPU v5e-8: 8 chips of 16 GiB"),
}
CONFIGS = [f"{task}_{model}_{algo}" for model in ("rho1b", "deepseek7b") for task in ("gsm8k", "math")
           for algo in ("sft", "vineppo", "ppo")]
CONFIGS += [f"{task}_{model}_{algo}" for model in ("qwen3-1.7b", "qwen3-8b") for task in ("gsm8k", "math")
            for algo in ("sft", "vineppo")]
GiB = 2**30


class Variation(NamedTuple):
    """How the plans differ from the configs as they are (each non-default part names the plan)."""

    mesh: str = ""  # data,fsdp,tensor instead of the configs' mesh
    overrides: tuple = ()  # config overrides "key=value"
    devices: int = 0  # devices instead of the machine's (a bigger slice; CPU-compiled only)
    tpu: bool = False  # TPU machines compiled by the TPU compiler for their slice (`planning.targets`)


def run_plans(hardware: list, configs: list, out: str, cache: str, max_compiles: int, vary: Variation = Variation()):
    use_host_devices(max(8, vary.devices))
    import jax

    from vinejax.config_file import apply_overrides, load_config_file
    from vinejax.planning.report import PlanOptions, format_plan, make_plan
    from vinejax.planning.targets import TPU_SLICES, tpu_devices
    from vinejax.tools.plan import parse_mesh

    plans = json.load(open(out)) if os.path.isfile(out) else {}
    for hw in hardware:
        count, gib, _ = HARDWARE[hw]
        tpu = vary.tpu and hw in TPU_SLICES
        for name in configs:
            count = vary.devices or count
            key = "/".join([hw, name] + ([f"devices={count}"] if vary.devices else [])
                           + (["compiler=tpu"] if tpu else []) + ([f"mesh={vary.mesh}"] if vary.mesh else [])
                           + list(vary.overrides))
            if key in plans:
                continue
            cfg = load_config_file(os.path.join(ROOT, "configs", f"{name}.py"))
            if vary.mesh:
                cfg.mesh.shape = parse_mesh(vary.mesh)
            apply_overrides(cfg, [tuple(o.split("=", 1)) for o in vary.overrides])
            print(f"== {key}", file=sys.stderr, flush=True)
            devices, kind = tpu_devices(hw) if tpu else (jax.devices("cpu")[:count], "fake CPU")
            options = PlanOptions(device_kind=kind, search=max_compiles > 0, max_compiles=max_compiles,
                                  cache_path=cache)
            plan = make_plan(cfg, devices, int(gib * GiB), options,
                             log=lambda line: print(line, file=sys.stderr, flush=True))
            print(format_plan(plan), file=sys.stderr, flush=True)
            plans[key] = plan
            with open(out + ".tmp", "w") as f:
                json.dump(plans, f, indent=0)
            os.replace(out + ".tmp", out)


def _gib(b) -> str:
    return "-" if b is None else f"{b / GiB:.1f}"


def _largest(search: dict, hbm: int) -> str:
    """The largest setting found; '+' when a larger one was not compiled; for none found within
    the compile budget, the value a line through the measured points predicts (not compiled)."""
    if search["largest"]:
        return f"{search['largest']}{'' if search['verified'] else '+'}"
    points = sorted((int(v), b) for v, b in search["measured"].items())
    if search["verified"] or len(points) < 2:
        return "none"
    (x0, y0), (x1, y1) = points[0], points[1]
    slope = (y1 - y0) / (x1 - x0)
    guess = x0 - (y0 - hbm) / slope if slope > 0 else 0
    size = 1 << max(int(guess), 1).bit_length() - 1  # a power of two at or below the line's crossing
    return f"none ≥ {x0}; ~{size} by extrapolation" if guess >= 1 else f"none ≥ {x0}"


def markdown(path: str) -> str:
    """One table per machine: each config's verdict, per-phase peaks and the largest settings that fit."""
    plans = json.load(open(path))
    phases = ["generate", "score", "critic_score", "trajectory", "mc", "mc_chunk", "policy_step", "critic_step",
              "sft_step", "eval_generate"]  # mc_chunk: plans made before the MC phase was the refill program
    knobs = ["ppo.micro_batch", "sft.micro_batch", "sampling.batch_size", "sampling.decode_rows",
             "vineppo.episodes_per_group", "vineppo.chunk_rows"]
    out = []
    for hw, (_, _, words) in HARDWARE.items():
        rows = {k.split("/", 1)[1]: p for k, p in plans.items() if k.startswith(hw + "/")}
        if not rows:
            continue
        order = [n for n in phases if any(r["name"] == n for p in rows.values() for r in p["phases"])]
        out += [f"#### {words}", "",
                "| config | mesh | state | " + " | ".join(order) + " | largest that fit (configured → largest) | verdict |",
                "|" + "---|" * (len(order) + 5)]
        for name, p in rows.items():
            peaks = {r["name"]: r for r in p["phases"]}
            state = max(sum(r["resident"].values()) + r["analytic"]["params"] + r["analytic"].get("optimizer", 0)
                        for r in p["phases"])
            cells = [(_gib(peaks[n]["peak"]) + ("" if peaks[n]["fits"] else " ✗")) if n in peaks else ""
                     for n in order]
            found = {s["knob"]: s for s in p["search"]}
            best = "; ".join(f"{k.split('.')[-1]} {found[k]['configured']} → {_largest(found[k], p['hbm_bytes'])}"
                             for k in knobs if k in found) or "not searched"
            mesh = ",".join(str(v) for v in p["mesh"].values())
            unsure = any(s["largest"] is None and not s["verified"] for s in p["search"])
            verdict = "fits" if p["fits"] else (
                "**does not fit** as configured (not searched)" if not p["search"] else
                "fits with settings" if p["fits_with_settings"] else
                "**does not fit** at the sizes compiled" if unsure else "**does not fit**")
            out.append(f"| {name} | {mesh} | {_gib(state)} | " + " | ".join(cells)
                       + f" | {best} | {verdict} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hardware", default=",".join(HARDWARE))
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--mesh", default="", help="data,fsdp,tensor instead of the configs' mesh")
    parser.add_argument("--devices", type=int, default=0, help="devices instead of the machine's (a bigger slice)")
    parser.add_argument("--set", action="append", default=[], help="a config override key=value (repeatable)")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "memory_plans.json"))
    parser.add_argument("--cache", default="")
    parser.add_argument("--max-compiles", type=int, default=3, help="compiles per searched setting; 0 = no search")
    parser.add_argument("--tpu-compiler", action="store_true",
                        help="compile the TPU machines' plans with the TPU compiler for their slice (needs libtpu: "
                             "make libtpu, PYTHONPATH=.libtpu)")
    parser.add_argument("--markdown", default="", help="print the tables of this plans file and exit")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(args.markdown))
        return 0
    if args.tpu_compiler and args.devices:
        parser.error("--devices plans a bigger CPU-compiled slice; the TPU compiler plans the named slices")
    run_plans(args.hardware.split(","), args.configs.split(","), args.out, args.cache or None, args.max_compiles,
              Variation(args.mesh, tuple(args.set), args.devices, args.tpu_compiler))
    return 0


if __name__ == "__main__":
    sys.exit(main())
