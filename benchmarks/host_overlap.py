"""Host work behind device work in the VinePPO iteration: per-phase times and the devices' idle
time with `train.overlap_host_work` off (before) and on (after); with `--compare early`, MC after
the iteration's sampling (`vineppo.early_start` off, before) against MC per group as soon as it is
sampled (on, after), host work overlapped in both.

    python benchmarks/host_overlap.py [--compare overlap|early] [--size small|tiny] [--problems 16] [--groups 4]
        [--iterations 4]

The real loop (`loop.run`) on the GSM8K RhoMath VinePPO paper config with a random policy and a
BPE tokenizer trained on GSM8K text (`accelerator_check.iteration_config`; real GSM8K problems
from ../shared/data when present). Sampling runs in `--groups` generate calls and the values
phase in as many episode groups, one per call: a group's continuations start after the next
call has sampled (MC that starts before sampling ends) and are graded on the host thread while
the next group decodes; the episodes' grading and step splitting run behind the device work. `time/host_wait` is the time the main
thread spent in host work or waiting for it, the devices idle. A warm-up run of each mode compiles its
programs first; medians over the iterations after the first. Ends with machine-readable lines:
`host wait fraction before: X`, `host wait fraction after: X`, `iteration time ratio: X` (after / before).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from accelerator_check import ROOT, TINY, iteration_config  # noqa: E402

from vinejax.model import llama  # noqa: E402
from vinejax.model.config import ModelConfig  # noqa: E402

# A size where a decode step's arithmetic, not per-op dispatch, dominates on CPU.
SMALL = dict(vocab_size=2048, hidden_size=256, intermediate_size=688, num_layers=4, num_heads=4,
             num_kv_heads=2, head_dim=64, max_position_embeddings=1024, rms_norm_eps=1e-5)
SIZES = {"small": SMALL, "tiny": TINY}  # tiny: little device work per host item, like a fast accelerator
PHASES = ("sample", "logprobs", "mc", "train", "host_wait", "iteration")


def run(cfg, params, args, tmp: str, after: bool) -> dict:
    """Median seconds per phase over the iterations after the first, and the mean MC states."""
    from vinejax.train import loop

    c = iteration_config(cfg, params, SIZES[args.size], args.data_dir, os.path.join(tmp, str(after)), True, args.problems,
                         args.new_tokens)
    c.sampling.batch_size = max(1, args.problems // args.groups)  # prompts per generate call
    c.vineppo.episodes_per_group = c.sampling.batch_size * c.sampling.samples_per_problem  # one MC group per call
    c.train.iterations, c.train.checkpoint_every = args.iterations, args.iterations
    c.train.overlap_host_work = after or args.compare == "early"
    c.vineppo.early_start = after or args.compare == "overlap"
    loop.run(c)
    with open(os.path.join(c.output_dir, "metrics.jsonl")) as f:
        records = [r for r in map(json.loads, f) if "time/iteration" in r][1:]
    out = {p: statistics.median(r.get(f"time/{p}", 0.0) for r in records) for p in PHASES}
    out["states"] = statistics.mean(r["mc/num_states"] for r in records)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", choices=("overlap", "early"), default="overlap",
                        help="before/after: host work overlapped, or MC started per group during sampling")
    parser.add_argument("--problems", type=int, default=16, help="problems per iteration (8 samples each)")
    parser.add_argument("--groups", type=int, default=4, help="episode groups of the values phase")
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--data-dir", default=os.environ.get("VINEJAX_DATA", os.path.join(ROOT, "..", "shared", "data")))
    args = parser.parse_args()
    shape = SIZES[args.size]
    cfg = ModelConfig(**shape, dtype="float32", param_dtype="float32", remat=False)
    params = jax.jit(lambda k: llama.init_params(cfg, k))(jax.random.key(0))
    print(f"device: {jax.devices()[0].device_kind} x {jax.device_count()}; model d{shape['hidden_size']} "
          f"L{shape['num_layers']}; {args.problems} problems x 8 samples, {args.groups} MC groups, "
          f"{args.new_tokens} new tokens; medians of iterations 2..{args.iterations}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        # Both modes draw the same episodes (the same shapes); a warm-up run of each compiles its
        # programs (MC after sampling makes calls of other shapes), so no measured run compiles.
        for mode in (False, True):
            run(cfg, params, args, os.path.join(tmp, "warm-up"), after=mode)
        before = run(cfg, params, args, tmp, after=False)
        after = run(cfg, params, args, tmp, after=True)
    print(f"before / after: {args.compare} off / on")
    print(f"{'phase s':<12}{'before':>10}{'after':>10}{'ratio':>8}")
    for p in PHASES:
        print(f"{p:<12}{before[p]:>10.2f}{after[p]:>10.2f}{after[p] / max(before[p], 1e-9):>8.2f}")
    print(f"MC states per iteration: {before['states']:.0f} / {after['states']:.0f}")
    print(f"host wait fraction before: {before['host_wait'] / before['iteration']:.3f}")
    print(f"host wait fraction after: {after['host_wait'] / after['iteration']:.3f}")
    print(f"iteration time ratio: {after['iteration'] / before['iteration']:.3f}")


if __name__ == "__main__":
    main()
