"""Child process of tests/test_tools_plan.py: plan a small model's programs, run them, measure.

    python tests/plan_measure_child.py DEVICES FSDP TENSOR PHASE[,PHASE...]

PHASE is a phase name, optionally with `@decode_rows=N` (`generate` through N refilled slots) or
`@lora` (the model with rank-16 adapters on every projection: the policy step trains them).
For each phase it compiles the planned program (`vinejax.planning`), runs it on real arrays of
the planned shapes and shardings (the MC phase: a full queue of rows that each write the whole
budget, from states spread over the trajectory cache), and prints one JSON line: the planned
peak of the program on one device (memory_analysis) and the analytic one, times the number of
devices, next to the measured peak of the whole process. On CPU, JAX reports no device memory
(`Device.memory_stats()` is None), so the measure is the process's resident set: the bytes of
the arguments (their shards, `addressable_shards`) plus how far the peak resident set (VmHWM,
reset through /proc/self/clear_refs before the call) rose above the resident set before it.
A fresh process keeps freed memory of earlier work from hiding new allocations; run it with
MALLOC_ARENA_MAX=1 (as the test does) so per-thread malloc arenas do not inflate the resident set.
"""
import json
import os
import re
import sys

DEVICES, FSDP, TENSOR = (int(x) for x in sys.argv[1:4])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from vinejax import sharding  # noqa: E402
from vinejax.config import base_config  # noqa: E402
from vinejax.model import llama, lora  # noqa: E402
from vinejax.model.config import LoraConfig, ModelConfig  # noqa: E402
from vinejax.planning import analytic, phases  # noqa: E402
from vinejax.sampling.refill import Queue  # noqa: E402
from vinejax.train import update  # noqa: E402
from vinejax.train.context import planning_context  # noqa: E402


def small_run(decode_rows: int = 0, adapters: bool = False):
    """A VinePPO config and a model big enough (~200 MB per step) that the process's own overhead
    is small; `adapters`: with LoRA (rank 16 on every projection)."""
    cfg = base_config()
    cfg.algo = "vineppo"
    cfg.ppo.episodes_per_step, cfg.ppo.micro_batch = 16, 8
    cfg.sampling.batch_size, cfg.sampling.samples_per_problem = 4, 2
    cfg.sampling.problems_per_iteration, cfg.sampling.decode_rows = 4, decode_rows
    cfg.task.max_prompt_tokens, cfg.sampling.max_new_tokens = 128, 128
    cfg.vineppo.max_estimated_states, cfg.vineppo.num_rollouts, cfg.vineppo.chunk_rows = 3, 8, 256
    model = ModelConfig(vocab_size=4096, hidden_size=256, intermediate_size=704, num_layers=2, num_heads=8,
                        num_kv_heads=4, head_dim=32, max_position_embeddings=512,
                        lora=LoraConfig(rank=16, alpha=32.0) if adapters else None)
    cfg.model.lora.rank = 16 if adapters else 0
    mesh = sharding.make_mesh((1, FSDP, TENSOR), devices=jax.devices()[:DEVICES])
    return planning_context(cfg, model, mesh)


def status_bytes(key: str) -> int:
    return int(re.search(key + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024


def real_arguments(run, phase, rng):
    """Arrays of the phase's abstract arguments: random params, their optimizer state, inputs."""
    base = params = jax.device_put(llama.init_params(run.model_cfg, jax.random.key(0)), run.param_shardings)
    trained, shardings = params, run.param_shardings
    if run.lora:  # the policy step trains the adapters; the other programs run the base with them attached
        trained = jax.device_put(lora.init_adapters(run.model_cfg, jax.random.key(1)), run.adapter_shardings)
        params, shardings = lora.attach(base, trained), run.adapter_shardings
    out = [trained if phase.name == "policy_step" else params]
    for arg in phase.args[1:]:
        if arg is phase.args[1] and phase.name == "policy_step":
            out.append(update.init_opt_state(run.optimizer, trained, shardings))
        elif isinstance(arg, update.StepInputs):
            out.append(update.StepInputs(base=base, dropout_key=None))
        elif isinstance(arg, Queue):
            out.append(full_queue(arg, phase, run, rng))
        else:
            out.append(jax.tree.map(lambda s: _fill(s, run.model_cfg, rng), arg))
    return out


def full_queue(q: Queue, phase, run, rng) -> Queue:
    """Every queue row real, continuing a row of its device's block at a random state of the
    planned lengths, with the whole budget (the stop table never stops: each row writes it)."""
    n, dp = q.budget.shape[0], q.count.shape[0]
    prompt, new = phases.lengths_of(run).prompt, run.cfg.sampling.max_new_tokens
    if phase.name == "mc":  # states between the prompt and the latest whose budget fits the room
        source_rows = phase.args[1].cache.k.shape[1]
        top = min(phase.args[1].cache.k.shape[2], phase.kwargs["plan"].room - new)
        pos = rng.integers(prompt, top + 1, n)
    else:  # generate: every row continues its prompt
        source_rows, pos = phase.args[1][0].shape[0], np.full(n, prompt)  # prompts (tokens, lengths)
    put = lambda x, like: jax.device_put(np.asarray(x, np.int32), like.sharding)
    keys = jax.device_put(jax.random.split(jax.random.key(1), n), q.keys.sharding)
    return Queue(put(np.arange(n) % (source_rows // dp), q.row), put(pos, q.pos), put(pos - 1, q.col), keys,
                 put(np.full(n, run.cfg.sampling.max_new_tokens), q.budget), put(np.full(dp, n // dp), q.count))


def _fill(s, model, rng):
    if jnp.issubdtype(s.dtype, jax.dtypes.prng_key):
        return jax.device_put(jax.random.split(jax.random.key(1), s.shape[0]), s.sharding)
    if s.dtype == jnp.int32 and len(s.shape) == 2 and s.shape[1] == model.vocab_size:
        x = np.zeros(s.shape, np.int32)  # stop table: never stops
    elif s.dtype == jnp.int32:
        x = rng.integers(3, model.vocab_size, s.shape).astype(np.int32)
    elif s.dtype == jnp.bool_:
        x = np.ones(s.shape, bool)
    else:
        x = -rng.uniform(0.5, 2.0, s.shape).astype(np.float32)
    return jax.device_put(x, s.sharding)


def measure(run, name: str) -> dict:
    lengths = phases.lengths_of(run)
    phase = phases.build_phase(name, run, lengths)
    refill = "plan" in phase.kwargs
    if name in ("generate", "eval_generate"):  # prompt lengths and budgets of the planned (longest) case
        prompts, lens = phase.args[1]
    compiled = phase.lower(run).compile()
    stats = compiled.memory_analysis()
    planned = stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes \
        + stats.temp_size_in_bytes + stats.generated_code_size_in_bytes
    args = real_arguments(run, phase, np.random.default_rng(0))
    if name in ("generate", "eval_generate"):
        args[1] = (args[1][0], jax.device_put(np.full(lens.shape, lengths.prompt, np.int32), lens.sharding))
        if not refill:
            budget = phase.args[2].budget
            args[2] = args[2]._replace(budget=jax.device_put(
                np.full(budget.shape, run.cfg.sampling.max_new_tokens, np.int32), budget.sharding))
        assert args[1][0].shape == prompts.shape
    jax.block_until_ready(args)
    held = sum(s.data.nbytes for x in jax.tree.leaves(args) for s in x.addressable_shards)
    before = status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    with run.mesh_context():
        jax.block_until_ready(compiled(*args, **{}))
    measured = held + status_bytes("VmHWM") - before
    model = analytic.breakdown(phase, run, lengths)
    return dict(phase=name, refill=refill, devices=DEVICES, planned=planned * DEVICES, measured=measured,
                analytic=(model["total"] - model["resident"]) * DEVICES,
                argument_planned=stats.argument_size_in_bytes * DEVICES, argument_held=held)


if __name__ == "__main__":
    for spec in sys.argv[4].split(","):
        name, _, setting = spec.partition("@")
        rows = int(setting.removeprefix("decode_rows=")) if setting.startswith("decode_rows=") else 0
        print(json.dumps(measure(small_run(rows, adapters=setting == "lora"), name)), flush=True)
