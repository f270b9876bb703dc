"""Shared pieces of the decode and train benchmarks: model sizes, the measured matmul peak,
FLOP counts and timing helpers. Not a test: numbers depend on the machine and its load.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from vinejax.model.hf import load_hf_model  # noqa: E402

# Llama shapes: "tiny" is the sampler benchmark's model; "100m" a ~100M-parameter Llama
# (85M in the layers, 2 x 24.6M in the untied embedding and LM head).
SIZES = {
    "tiny": dict(vocab_size=512, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=8),
    "100m": dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                 num_attention_heads=12, num_key_value_heads=12),
}


def build_models(size: str, with_hf: bool = True, dtype: str | None = None):
    """(transformers LlamaForCausalLM fp32 or None, our ModelConfig, our params) with the same random weights."""
    import torch
    import transformers

    hcfg = transformers.LlamaConfig(**SIZES[size], max_position_embeddings=2048, rms_norm_eps=1e-5,
                                    bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(hcfg).to(torch.float32).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        cfg, params = load_hf_model(tmp, dtype=dtype)
    return (hf if with_hf else None), cfg, params


def timed(fn):
    """(seconds, result) of one call."""
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def clocked(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of one call. CPU time does not
    count the time other processes hold the cores, so its ratios are steadier on a loaded machine."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def median(xs) -> float:
    return statistics.median(xs)


_PEAK_FN = None


def matmul_peak(n: int = 1024, reps: int = 8) -> tuple[float, float]:
    """fp32 matmul FLOP/s of XLA right now: (per wall second, per CPU second), the best of 3 calls
    of a chain of `reps` n x n x n matmuls.

    Called next to each measurement (this machine's cores are shared, so the wall figure moves
    with the load; the CPU-second figure is the machine's arithmetic rate per busy core-second).
    """
    global _PEAK_FN
    a = jnp.full((n, n), 1.0 / n, jnp.float32)
    if _PEAK_FN is None:
        _PEAK_FN = jax.jit(lambda x, w: jax.lax.fori_loop(0, reps, lambda i, y: y @ w, x))
        _PEAK_FN(a, a).block_until_ready()
    runs = [clocked(lambda: _PEAK_FN(a, a).block_until_ready()) for _ in range(3)]
    flops = reps * 2 * n**3
    return flops / min(w for w, _ in runs), flops / min(c for _, c in runs)


def matmul_flops_per_token(cfg) -> float:
    """Weight-matmul FLOPs of one token's forward (q/k/v/o, MLP, LM head; no embedding lookup)."""
    d, f, h, kv, dh = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    per_layer = 2 * d * (h * dh + 2 * kv * dh) + 2 * h * dh * d + 3 * 2 * d * f
    return cfg.num_layers * per_layer + 2 * d * cfg.vocab_size


def attention_flops_per_token(cfg, ctx: float) -> float:
    """Attention FLOPs (QK^T and PV) of one token attending to `ctx` positions."""
    return cfg.num_layers * 2 * 2 * cfg.num_heads * cfg.head_dim * ctx


def matmul_params(cfg) -> int:
    """Parameters used in matmuls (layers + LM head): the N of 6·N·tokens."""
    return int(matmul_flops_per_token(cfg) // 2)


def machine_line() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"jax {jax.__version__} devices {jax.devices()} cores {os.cpu_count()} load average {load:.1f}"
