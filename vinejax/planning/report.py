"""A memory plan of one config on one mesh: every phase compiled and modelled, the largest
batch-like settings that fit, and a verdict; as a dict (JSON-able) and as text."""
from __future__ import annotations

import copy
import dataclasses
import time
from typing import Callable, Optional

from vinejax import sharding
from vinejax.planning import analytic, phases, shapes
from vinejax.planning.search import Compiler, GiB, largest_fitting
from vinejax.sampling.core import bucket
from vinejax.train.context import planning_context

PLAN_ITERATIONS = 1000


def knob_candidates(cfg, knob: str, dp: int) -> list[int]:
    """The values of a batch-like setting worth trying: valid ones, one per compiled shape."""
    if knob in ("ppo.micro_batch", "sft.micro_batch"):
        total = cfg.ppo.episodes_per_step if knob == "ppo.micro_batch" else cfg.sft.batch_size
        return [v for v in range(dp, total + 1, dp) if total % v == 0]
    top = {"sampling.batch_size": 1024, "vineppo.episodes_per_group": 1024}.get(knob, 8192)
    return sorted({bucket(dp * 2**k, multiple_of=dp) for k in range(14) if dp * 2**k <= top})


@dataclasses.dataclass(frozen=True)
class PlanOptions:
    """What to plan besides the config and the devices."""

    device_kind: str = ""  # the devices in words (default: their platform)
    model_shape: Optional[str] = None  # a built-in shape instead of the config's (`shapes.PAPER_SHAPES`)
    prompt_len: Optional[int] = None  # the longest prompt (default task.max_prompt_tokens)
    only: Optional[list] = None  # phase names to plan (default all of the run's)
    search: bool = True  # find the largest fitting value of each batch-like setting by compiling
    max_compiles: int = 4  # compiles per searched setting
    cache_path: Optional[str] = None  # JSON file caching compiled memory across runs


def make_plan(cfg, devices: list, hbm_bytes: int, options: PlanOptions = PlanOptions(),
              log: Callable[[str], None] = lambda _: None) -> dict:
    """The plan of `cfg` (its `mesh.shape` over `devices`) against `hbm_bytes` per device."""
    o = options
    start = time.time()
    cfg = copy.deepcopy(cfg)
    cfg.train.iterations = PLAN_ITERATIONS  # the LR schedule's length changes no buffer; one value lets plans share compiles
    model_cfg, source = shapes.model_config_of(cfg, o.model_shape)
    mesh = sharding.make_mesh(tuple(cfg.mesh.shape), devices=devices)
    run = planning_context(cfg, model_cfg, mesh)
    lengths = phases.lengths_of(run, o.prompt_len)
    compiler = Compiler(run, o.cache_path, log)
    names = [n for n in phases.phase_names(cfg) if o.only is None or n in o.only]
    rows = []
    for name in names:
        phase = phases.build_phase(name, run, lengths)
        log(f"{name}: {phase.sizes}")
        measured = compiler.measure(phase)
        resident = {k: phases.device_bytes(v) for k, v in phase.resident.items()}
        peak = measured.program + sum(resident.values())
        rows.append(dict(name=name, knob=phase.knob, value=phase.value, sizes=phase.sizes,
                         compiled=vars(measured) | {"program": measured.program}, resident=resident, peak=peak,
                         fits=peak <= hbm_bytes, analytic=analytic.breakdown(phase, run, lengths)))
    found = []
    knobs = list(dict.fromkeys(r["knob"] for r in rows if r["knob"]))
    for knob in knobs if o.search else []:
        members = [r["name"] for r in rows if r["knob"] == knob]

        def peak_at(value, members=members):
            return max(compiler.peak(phases.build_phase(n, run, lengths, value)) for n in members)

        configured = max(r["value"] for r in rows if r["knob"] == knob)  # decode_rows 0: every row of a call
        result = largest_fitting(peak_at, knob_candidates(cfg, knob, sharding.data_parallel_size(mesh)),
                                 configured, hbm_bytes, knob, max(2, o.max_compiles))
        found.append(vars(result) | {"phases": members})
    too_big = [r for r in rows if not r["fits"]]
    settable = {f["knob"]: f for f in found}
    fixable = all(r["knob"] in settable and settable[r["knob"]]["largest"] for r in too_big)
    m = model_cfg
    return dict(
        config=cfg.output_dir, algo=cfg.algo,
        model=dict(source=source, params=shapes.param_count(m), layers=m.num_layers, hidden=m.hidden_size,
                   heads=m.num_heads, kv_heads=m.num_kv_heads, vocab=m.vocab_size, param_dtype=m.param_dtype,
                   dtype=m.dtype, remat=m.remat),
        devices=dict(count=len(devices), kind=o.device_kind or devices[0].platform, platform=devices[0].platform),
        mesh=dict(mesh.shape), hbm_bytes=hbm_bytes, lengths=vars(lengths),
        phases=rows, search=found, fits=not too_big, fits_with_settings=not too_big or fixable,
        compiles=compiler.compiles, seconds=round(time.time() - start, 1),
    )


def _gib(b: Optional[int]) -> str:
    return "-" if b is None else f"{b / GiB:.2f}"


ANALYTIC_TERMS = ("params", "optimizer", "gradients", "activations_remat", "activations_no_remat", "activations",
                  "kv_cache", "decode_weights", "trajectory", "logits", "outputs", "inputs", "resident", "total")


def format_plan(plan: dict) -> str:
    """The plan as text: compiled and analytic bytes per device, settings that fit, verdict."""
    m, d, h = plan["model"], plan["devices"], plan["hbm_bytes"]
    mesh = " ".join(f"{k}={v}" for k, v in plan["mesh"].items())
    ln = plan["lengths"]
    out = [
        f"plan       {plan['config']} ({plan['algo']})",
        f"model      {m['source']}: {m['params'] / 1e9:.2f} B params, {m['param_dtype']} params, {m['dtype']} "
        f"compute, remat {'on' if m['remat'] else 'off'}",
        f"devices    {d['count']} {d['kind']} devices; mesh {mesh}; budget {h / GiB:.1f} GiB per device",
        f"lengths    prompt {ln['prompt']}, train rows {ln['train']}, sampled rows {ln['episode_cols']}, "
        f"SFT rows {ln['sft']} tokens",
        "",
        "compiled (memory_analysis), GiB per device; peak = args + out - alias + temp + code + resident state",
        f"{'phase':<14}{'args':>8}{'out':>8}{'alias':>8}{'temp':>8}{'code':>7}{'resident':>10}{'peak':>8}"
        f"{'analytic':>10}  fits  sizes",
    ]
    for r in plan["phases"]:
        c = r["compiled"]
        out.append(f"{r['name']:<14}{_gib(c['argument']):>8}{_gib(c['output']):>8}{_gib(c['alias']):>8}"
                   f"{_gib(c['temp']):>8}{_gib(c['code']):>7}{_gib(sum(r['resident'].values())):>10}"
                   f"{_gib(r['peak']):>8}{_gib(r['analytic']['total']):>10}  {'yes' if r['fits'] else 'NO ':<4}"
                   f"  {r['sizes']}")
    terms = [t for t in ANALYTIC_TERMS if any(t in r["analytic"] for r in plan["phases"])]
    short = {"activations_remat": "act_remat", "activations_no_remat": "act_noremat", "activations": "act",
             "decode_weights": "dec_w", "trajectory": "traj", "optimizer": "optim"}
    out += ["", "analytic, GiB per device (act = activations with the config's remat; total uses it)",
            f"{'phase':<14}" + "".join(f"{short.get(t, t):>12}" for t in terms)]
    for r in plan["phases"]:
        out.append(f"{r['name']:<14}" + "".join(f"{_gib(r['analytic'].get(t)):>12}" for t in terms))
    if plan["search"]:
        out += ["", f"largest settings that fit {h / GiB:.1f} GiB per device (by compiling; value: peak GiB)"]
        for s in plan["search"]:
            tried = ", ".join(f"{v}: {b / GiB:.1f}" for v, b in s["measured"].items())
            best = "none fits" if s["largest"] is None else f"largest {s['largest']}"
            note = "verified" if s["verified"] else "larger values not compiled"
            out.append(f"  {s['knob']:<20} configured {s['configured']:<5} {best} ({note}; {', '.join(s['phases'])}; "
                       f"{tried})")
    out += ["", "verdict    " + verdict(plan), f"tool       {plan['compiles']} compiles, {plan['seconds']:.0f} s"]
    if d["platform"] == "cpu":
        out.append("caveat     " + CPU_CAVEAT)
    elif d["platform"] == "tpu":
        out.append("compiler   " + TPU_NOTE)
    return "\n".join(out)


CPU_CAVEAT = ("compiled for CPU devices: CPU has no flash attention, so the [rows, heads, T, T] scores of the long "
              "passes (prefill, trajectory, score) are counted in full, and its decode loops hold bfloat16 KV caches "
              "at float32 size; an accelerator's own plan is lower there")


TPU_NOTE = ("the TPU compiler's own memory for these programs on the slice (compiled ahead of time, no TPU "
            "used); a program it refused for lack of memory shows the temporaries it said it needed (outputs "
            "not counted)")


def verdict(plan: dict) -> str:
    """FITS, FITS WITH SETTINGS (which), or DOES NOT FIT (which phase, by how much)."""
    h = plan["hbm_bytes"]
    if plan["fits"]:
        return f"FITS in {h / GiB:.1f} GiB per device (largest phase {_largest(plan)})"
    settable = {s["knob"]: s for s in plan["search"]}
    bad = [r for r in plan["phases"] if not r["fits"]]
    if plan["fits_with_settings"]:
        keys = sorted({f"{r['knob']}={settable[r['knob']]['largest']}" for r in bad})
        return f"FITS WITH SETTINGS {' '.join(keys)} (as configured: " + _over(bad, h, plan["search"]) + ")"
    return "DOES NOT FIT: " + _over(bad, h, plan["search"])


def _largest(plan: dict) -> str:
    r = max(plan["phases"], key=lambda r: r["peak"])
    return f"{r['name']} {r['peak'] / GiB:.1f} GiB"


def _over(bad: list, h: int, search: list = ()) -> str:
    """Each phase over budget, with the setting that makes it fit when the search found one."""
    found = {s["knob"]: s for s in search}
    parts = []
    for r in bad:
        s = found.get(r["knob"])
        if r["knob"] is None:
            fix = "no setting sizes it"
        elif s is None:
            fix = "not searched"
        elif s["largest"] is None:
            fix = f"not even the smallest {r['knob']}"
        else:
            fix = f"{r['knob']}={s['largest']} fits"
        parts.append(f"{r['name']} needs {r['peak'] / GiB:.1f} GiB ({fix})")
    return "; ".join(parts)
