"""Accelerator check: the figures that matter for VinePPO on one GPU or TPU chip, in one short run.

    python benchmarks/accelerator_check.py            # RhoMath-1.1B's shape, random bf16 weights
    python benchmarks/accelerator_check.py --tiny     # a tiny model on CPU (what the test runs)

Prints one line per figure (`name: value` plus its fraction of the chip's measured peak) as soon
as it is measured, so a run cut short still reports what it reached:
  matmul peak, memory bandwidth; decode tok/s at batch 64 and 256 (prefill excluded); MC
  continuation tok/s from the trajectory's cache; the policy train step's MFU; one VinePPO
  iteration on real GSM8K problems (phase times); the `vinejax.tools.plan` estimate next to the
  measured peak device memory. Sections stop being started once `--budget` seconds have passed.
No downloads: the model is random, the tokenizer is a BPE trained here on GSM8K text.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
from vinejax.model import llama  # noqa: E402
from vinejax.model.config import ModelConfig  # noqa: E402
from vinejax.sampling import RolloutEnv, SamplingConfig, assemble_rows, continue_from_prefixes, generate  # noqa: E402

RHO = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_layers=22, num_heads=32,
           num_kv_heads=4, head_dim=64, max_position_embeddings=2048, rms_norm_eps=1e-5)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
            num_kv_heads=2, head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-5)
RESULTS: dict = {}


def report(name: str, value: float, unit: str = "", peak_fraction: float | None = None) -> None:
    """One line per figure (and a JSON record for --out)."""
    RESULTS[name] = {"value": value, "unit": unit, "peak_fraction": peak_fraction}
    frac = f"  ({peak_fraction:.2f} of peak)" if peak_fraction is not None else ""
    print(f"{name}: {value:.4g}{(' ' + unit) if unit else ''}{frac}", flush=True)


def median_time(fn, repeats: int = 3) -> float:
    """Median wall-clock seconds of `fn()` (blocked until ready) after one warm-up call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(dtype, n: int) -> float:
    """Measured FLOP/s of an n³ matmul chain in `dtype` (the chip's practical peak)."""
    a = jnp.ones((n, n), dtype) * 1e-3
    f = jax.jit(lambda x: jax.lax.fori_loop(0, 8, lambda i, y: (y @ a).astype(dtype), x))
    return 8 * 2 * n**3 / median_time(lambda: f(a))


def copy_bandwidth(n_bytes: int) -> float:
    """Measured bytes/s of reading + writing an array on the device."""
    x = jnp.ones((n_bytes // 2,), jnp.bfloat16)
    f = jax.jit(lambda v: v * 2)
    return 2 * n_bytes / median_time(lambda: f(x))


def decode_flops(cfg: ModelConfig, ctx: float) -> float:
    """Forward FLOPs of one decoded token attending `ctx` positions (matmuls + attention)."""
    d, f, h, kv, dh = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    layer = 2 * d * (h + 2 * kv) * dh + 2 * h * dh * d + 3 * 2 * d * f + 2 * 2 * h * dh * ctx
    return cfg.num_layers * layer + 2 * d * cfg.vocab_size


def param_count(cfg: ModelConfig) -> int:
    return sum(int(np.prod(s.shape)) for s in jax.tree.leaves(llama.param_shapes(cfg)))


def section_decode(cfg, params, peak, bandwidth, batches, prompt_len, new_tokens):
    scfg = SamplingConfig(max_new_tokens=new_tokens, temperature=1.0, top_p=0.9)  # no EOS: every row runs
    weights = param_count(cfg) * jnp.dtype(cfg.param_dtype).itemsize
    for batch in batches:
        prompts = np.random.default_rng(0).integers(3, cfg.vocab_size, (batch, prompt_len)).astype(np.int32)
        lens = np.full((batch,), prompt_len, np.int32)
        one = SamplingConfig(max_new_tokens=1, temperature=1.0, top_p=0.9)
        prefill_env, env = RolloutEnv(params, cfg, one), RolloutEnv(params, cfg, scfg)
        t_prefill = median_time(lambda: generate(prefill_env, prompts, lens, jax.random.key(0)).tokens, 2)
        t_all = median_time(lambda: generate(env, prompts, lens, jax.random.key(0)).tokens, 2)
        t_decode = max(t_all - t_prefill, 1e-9)
        tok_s = batch * (new_tokens - 1) / t_decode
        flops = decode_flops(cfg, prompt_len + new_tokens / 2) * tok_s
        report(f"decode tok/s batch {batch}", tok_s, "tok/s", flops / peak)
        if bandwidth:  # decode is read-bound at small batch: weights (+ cache) per step
            report(f"decode weight-read bandwidth batch {batch}", weights * tok_s / batch / 1e9, "GB/s",
                   weights * tok_s / batch / bandwidth)


def section_mc(cfg, params, peak, rows, prompt_len, response_len, states, k, budget, chunk):
    scfg = SamplingConfig(max_new_tokens=response_len, temperature=1.0, top_p=0.9)
    prompts = np.random.default_rng(1).integers(3, cfg.vocab_size, (rows, prompt_len)).astype(np.int32)
    lens = np.full((rows,), prompt_len, np.int32)
    out = generate(RolloutEnv(params, cfg, scfg), prompts, lens, jax.random.key(1))
    tokens, _, _, total = jax.device_get(assemble_rows(prompts, lens, out))
    positions = np.stack([np.linspace(prompt_len, t - 1, states).astype(np.int32) for t in total])  # [B, S]
    mc = scfg.replace(max_new_tokens=budget)
    env = RolloutEnv(params, cfg, mc, chunk_rows=chunk)
    run = lambda: continue_from_prefixes(env, tokens, total, positions, jax.random.key(2), k)
    seconds = median_time(lambda: run().lengths, 2)
    result = run()
    useful = float(np.asarray(result.lengths).sum())
    tok_s = useful / seconds
    report("mc continuation tok/s", tok_s, "tok/s", decode_flops(cfg, prompt_len + response_len) * tok_s / peak)
    report("mc live fraction", float(result.stats["live_fraction"]))


def section_train(cfg, params, peak, micro, length, steps_per_batch):
    from vinejax.config import base_config
    from vinejax.rl.batch import RolloutBatch
    from vinejax.rl.losses import PolicyLossConfig
    from vinejax.train import update

    optim = base_config().optim
    optim.lr, optim.warmup_shape = 1e-6, "linear"
    optimizer = update.make_optimizer(optim, total_steps=100)
    opt_state = jax.jit(optimizer.init)(params)
    rows = micro * steps_per_batch
    rng = np.random.default_rng(3)
    tokens = rng.integers(3, cfg.vocab_size, (rows, length)).astype(np.int32)
    mask = np.zeros((rows, length), bool)
    mask[:, length // 4:] = True
    lp = np.where(mask, -2.0, 0.0).astype(np.float32)
    batch = RolloutBatch(tokens=tokens, response_mask=mask, old_logprobs=lp, ref_logprobs=lp,
                         advantages=np.where(mask, rng.normal(size=mask.shape), 0).astype(np.float32),
                         rewards=np.zeros(rows, np.float32))
    batch = jax.tree.map(lambda x: jnp.asarray(x.reshape((steps_per_batch, micro) + x.shape[1:])), batch)
    state = {"p": jax.tree.map(jnp.copy, params), "o": opt_state}  # the step donates its inputs

    def step():
        state["p"], state["o"], m = update.policy_step(state["p"], state["o"], batch, model_cfg=cfg,
                                                       loss_cfg=PolicyLossConfig(), optimizer=optimizer,
                                                       temperature=0.6)
        return m["grad_norm"]

    seconds = median_time(step, 2)
    n = param_count(cfg)
    attention = 2 * 2 * cfg.num_layers * cfg.num_heads * cfg.head_dim * length / 2  # per token, causal
    flops = (6 * n + 3 * attention) * rows * length
    report("train step tok/s", rows * length / seconds, "tok/s")
    report("train step mfu", flops / seconds / peak, "", flops / seconds / peak)
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        report("peak device memory", stats["peak_bytes_in_use"] / 2**30, "GiB")


def gsm8k_texts(data_dir: str, count: int) -> list[dict]:
    """GSM8K train records (question, answer) from a shared/data layout, or a few synthetic ones."""
    path = os.path.join(data_dir, "gsm8k", "train.jsonl")
    if os.path.isfile(path):
        with open(path) as f:
            return [json.loads(line) for _, line in zip(range(count), f)]
    return [{"question": f"Tom has {i} apples and buys {i + 3} more. How many now?",
             "answer": f"Tom has {i} + {i + 3} = {2 * i + 3} apples.\n#### {2 * i + 3}"} for i in range(count)]


def iteration_config(cfg, params, shape, data_dir, tmp, tiny, problems, new_tokens):
    """The GSM8K RhoMath VinePPO paper config for `problems` problems per iteration, on the random
    policy `params` saved as an HF folder with a BPE tokenizer trained on GSM8K text (one iteration,
    no evaluation, no export; output under `tmp`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from vinejax.config import paper_config
    from vinejax.model.hf import save_hf_model

    records = gsm8k_texts(data_dir, 2000)
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator([r["question"] + "\n" + r["answer"] for r in records],
                             trainers.BpeTrainer(vocab_size=shape["vocab_size"], special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
                                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    model_dir = os.path.join(tmp, "model")
    save_hf_model(params, cfg.replace(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id), model_dir,
                  tokenizer=tok)
    os.makedirs(os.path.join(tmp, "data", "vineppo_splits"), exist_ok=True)
    for split in ("train", "validation"):
        with open(os.path.join(tmp, "data", "vineppo_splits", f"gsm8k_{split}.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    c = paper_config("rho1b", "gsm8k", "vineppo")
    c.output_dir = os.path.join(tmp, "run")
    c.model.init_from, c.model.hf_path = "", model_dir
    c.task.data_dir = os.path.join(tmp, "data")
    c.model.context_size = c.eval.context_size = -1
    if tiny:
        c.model.dtype = c.model.param_dtype = "float32"
        c.model.remat = False
        c.task.max_prompt_tokens = 400
    c.sampling.problems_per_iteration, c.sampling.max_new_tokens = problems, new_tokens
    c.sampling.batch_size = problems
    c.ppo.episodes_per_step = problems * c.sampling.samples_per_problem // 2
    c.ppo.micro_batch = min(c.ppo.micro_batch, c.ppo.episodes_per_step)
    c.vineppo.max_estimated_states = 3  # a random policy writes many short lines: keep the MC bounded
    c.train.iterations, c.train.eval_every, c.train.export_hf = 1, 0, False
    c.train.samples_per_iteration = 0
    return c


def section_iteration(cfg, params, shape, data_dir, tmp, tiny, problems, new_tokens):
    """One VinePPO iteration of the real loop (`iteration_config`)."""
    from vinejax.train import loop

    c = iteration_config(cfg, params, shape, data_dir, tmp, tiny, problems, new_tokens)
    start = time.perf_counter()
    last = loop.run(c)
    report("vineppo iteration s (incl. compile)", time.perf_counter() - start, "s")
    for phase in ("sample", "logprobs", "mc", "train", "host_wait", "iteration"):
        if f"time/{phase}" in last:
            report(f"iteration phase {phase} s", last[f"time/{phase}"], "s")
    report("iteration mc states", last.get("mc/num_states", 0.0))


def section_plan(tiny):
    """The AOT memory plan of the config this check trains, beside the measured peak."""
    try:
        from vinejax.tools import plan  # noqa: F401
    except ImportError:
        print("plan: vinejax.tools.plan is not available in this checkout", flush=True)
        return
    import subprocess

    config = os.path.join(ROOT, "configs", "arith_vineppo.py" if tiny else "gsm8k_rho1b_vineppo.py")
    out = subprocess.run([sys.executable, "-m", "vinejax.tools.plan", "--config", config, "--devices", "1"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    print(out.stdout[-3000:] + out.stderr[-1000:], flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny model (CPU smoke mode)")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds after which no section starts")
    parser.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data"))
    parser.add_argument("--out", default="", help="also write the figures as JSON here")
    parser.add_argument("--sections", default="decode,train,mc,iteration,plan")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    shape = TINY if args.tiny else RHO
    dtype = "float32" if args.tiny else "bfloat16"
    cfg = ModelConfig(**shape, dtype=dtype, param_dtype=dtype, remat=not args.tiny)
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}) x {jax.device_count()}; jax {jax.__version__}; "
          f"model {param_count(cfg) / 1e6:.1f}M params, {dtype}", flush=True)
    peak = matmul_peak(jnp.dtype(dtype), 512 if args.tiny else 8192)
    report("matmul peak", peak / 1e12, "TFLOP/s")
    bandwidth = None if args.tiny else copy_bandwidth(1 << 30)
    if bandwidth:
        report("memory bandwidth", bandwidth / 1e12, "TB/s")
    params = jax.jit(lambda k: llama.init_params(cfg, k))(jax.random.key(0))
    small = args.tiny
    sections = {
        "decode": lambda: section_decode(cfg, params, peak, bandwidth, (8,) if small else (64, 256), 16 if small else 64,
                                         16 if small else 128),
        "train": lambda: section_train(cfg, params, peak, 2 if small else 8, 32 if small else 512, 2),
        "mc": lambda: section_mc(cfg, params, peak, 4 if small else 64, 8 if small else 64, 16 if small else 128, 4,
                                 3 if small else 9, 8 if small else 64, 64 if small else 1024),
        "iteration": lambda: section_iteration(cfg, params, shape, args.data_dir, tmp, small, 2 if small else 16,
                                               12 if small else 128),
        "plan": lambda: section_plan(small),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sections.split(","):
            if time.perf_counter() - started > args.budget:
                print(f"{name}: skipped (budget of {args.budget:.0f} s spent)", flush=True)
                continue
            t = time.perf_counter()
            try:
                sections[name]()
            except Exception as error:  # report and go on: the other figures still count
                print(f"{name}: failed: {type(error).__name__}: {str(error)[:400]}", flush=True)
            print(f"[{name} took {time.perf_counter() - t:.1f} s]", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(RESULTS, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
