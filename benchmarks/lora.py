"""LoRA at the paper's shapes: merged weights (W + s·A·B, built once) against unmerged adapters
(x·W + s·(x·A)·B in every layer), for a decode step and for a forward pass over many tokens (the
MC trajectory pass, scoring), and what the merge itself costs.

    python benchmarks/lora.py [--shape rho1b|deepseek7b] [--rank 64] [--layers 2] [--rows 64]

Two decoder layers of the real width (RhoMath-1.1B: D 2048, F 5632, GQA 32/4; DeepSeekMath-7B:
D 4096, F 11008, 32 heads) and a 1024-token vocabulary, in float32 on CPU, where arithmetic
dominates at these widths (bf16 matmuls are emulated on CPU). Every layer's projection is
adapted (rank 64). Prints the best of 3 calls in CPU milliseconds of this process (the work,
whatever else shares the cores; run it single-threaded for clean numbers:
XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1") and the ratios.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from vinejax.model import decode, llama, lora  # noqa: E402
from vinejax.model.config import LoraConfig, ModelConfig  # noqa: E402
from vinejax.planning.shapes import PAPER_SHAPES  # noqa: E402


def best_of(fn, *args, repeats: int = 3) -> float:
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        start = time.process_time()  # CPU seconds of this process: the work, however shared the cores
        jax.block_until_ready(fn(*args))
        times.append(time.process_time() - start)
    return min(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="rho1b", choices=("rho1b", "deepseek7b"))
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--rows", type=int, default=64, help="decode rows")
    ap.add_argument("--slots", type=int, default=512, help="decode cache slots")
    ap.add_argument("--tokens", type=int, default=2048, help="tokens of the forward pass (8 rows)")
    args = ap.parse_args(argv)
    s = PAPER_SHAPES[args.shape]
    cfg = ModelConfig(vocab_size=1024, hidden_size=s["hidden_size"], intermediate_size=s["intermediate_size"],
                      num_layers=args.layers, num_heads=s["num_attention_heads"], num_kv_heads=s["num_key_value_heads"],
                      head_dim=s["hidden_size"] // s["num_attention_heads"], max_position_embeddings=4096,
                      lora=LoraConfig(rank=args.rank, alpha=2.0 * args.rank))
    base = llama.init_params(cfg, jax.random.key(0))
    adapters = jax.tree.map(lambda x: x + 0.01, lora.init_adapters(cfg, jax.random.key(1)))
    unmerged = lora.attach(base, adapters)
    merged = jax.jit(lambda p: lora.merge(cfg, p))(unmerged)

    rows, slots = args.rows, args.slots
    cache = llama.init_cache(cfg, rows, slots)._replace(lengths=jnp.full((rows,), slots // 2, jnp.int32))
    tok = jnp.ones((rows, 1), jnp.int32)
    step = jax.jit(lambda p, c: llama.forward_cached(p, cfg, tok, c)[0])  # one decode step, scanned layers
    seq = jnp.ones((8, args.tokens // 8), jnp.int32)
    fwd = jax.jit(lambda p: llama.forward(p, cfg, seq)[0])
    fuse = jax.jit(lambda p: decode.decode_weights(p, cfg))  # once per sampling call
    print(f"{args.shape}: {args.layers} layers of D {cfg.hidden_size}, F {cfg.intermediate_size}, heads "
          f"{cfg.num_heads}/{cfg.num_kv_heads}; LoRA rank {args.rank} on every projection; float32, "
          f"{jax.devices()[0].platform}")

    t = {}
    t["step", "merged"] = best_of(lambda p: step(p, cache), merged)
    t["step", "unmerged"] = best_of(lambda p: step(p, cache), unmerged)
    t["fwd", "merged"] = best_of(fwd, merged)
    t["fwd", "unmerged"] = best_of(fwd, unmerged)
    t["fuse", "base"] = best_of(fuse, base)
    t["fuse", "merge"] = best_of(fuse, unmerged)
    row = lambda name, a, b, la="merged", lb="unmerged": print(
        f"{name:34s} {la} {a * 1e3:9.2f} ms   {lb} {b * 1e3:9.2f} ms   ratio {b / a:5.2f}")
    row(f"decode step ({rows} rows, {slots} slots)", t["step", "merged"], t["step", "unmerged"])
    row(f"forward ({args.tokens} tokens)", t["fwd", "merged"], t["fwd", "unmerged"])
    row("decode weights, once per call", t["fuse", "base"], t["fuse", "merge"], "base ", "+merge  ")
    saving = t["step", "unmerged"] - t["step", "merged"]
    extra = t["fuse", "merge"] - t["fuse", "base"]
    if saving > 0:
        print(f"merging pays for itself after {extra / saving:.1f} decode steps (a sampling call decodes hundreds)")
    else:
        print("unmerged decode steps are no slower here: merging does not pay")

if __name__ == "__main__":
    main()
