"""Decode benchmark: vinejax `generate` and its decode loop against transformers `generate` and
against the matmul-bound limit, for a tiny Llama and a ~100M-parameter Llama.

Run: python benchmarks/decode.py [--sizes tiny,100m] [--batches tiny:32,64 100m:64] [--repeats 2]
(CPU). The default run (tiny at batch 32 and 64, 100m at 64) takes a few minutes on 2 idle cores;
`--batches tiny:32,64,256 100m:64,256` adds the big batches.

Per (size, batch), medians over repeats in which ours, the peer, the matmuls alone and a matmul
peak probe run in turn (the same machine load for all):
* generate tok/s, ours and transformers (fp32 torch, its faster of 1 or all threads), prefill included;
* decode tok/s, prefill excluded: ours = the jitted decode loop on prefilled caches with the decode
  weight layout done (both happen before the loop in `generate`); transformers = generate(N) − generate(1);
* matmuls alone: the decode steps' weight matmuls ([R, D] @ fused q/k/v, o, gate/up, down, LM head)
  chained in a loop; "decode / matmuls" = decode time ÷ their time (wall, and CPU time);
* fraction of peak: decode FLOP (weight matmuls + attention over the valid positions) per CPU
  second ÷ the 1024³ fp32 matmul's FLOP per CPU second, measured in the same repeat. CPU time
  is used because the wall-clock rate of this shared machine changes several-fold within a
  minute; the wall-clock fraction is printed too.

The last lines are the machine-readable figures `decode peak fraction 100m` (batch 64, CPU time),
`decode vs matmul time tiny` (batch 64, wall) and `generate ratio` (tiny, batch 32, ours ÷
transformers tok/s, prefill included).
"""
from __future__ import annotations

import argparse
import os

import common
import jax
import jax.numpy as jnp
import numpy as np

from vinejax.model import decode as model_decode
from vinejax.sampling import RolloutEnv, SamplingConfig, generate
from vinejax.sampling.core import Rows, cache_room, decode
from vinejax.sampling.generation import row_keys

SHAPES = {"tiny": dict(prompt=32, new=64), "100m": dict(prompt=16, new=16)}  # prompt length, new tokens


def decode_flops(cfg, rows: int, prompt: int, steps: int) -> float:
    """FLOPs of `steps` decode steps of `rows` rows after a prompt (the j-th step attends prompt + j)."""
    ctx = steps * prompt + steps * (steps + 1) / 2
    return rows * (steps * common.matmul_flops_per_token(cfg) + common.attention_flops_per_token(cfg, 1) * ctx)


def matmul_loop(cfg, rows: int, steps: int):
    """A jitted chain of the decode steps' weight matmuls ([rows, D] through every layer's fused
    q/k/v, o, gate/up and down projections, then the LM head), `steps` times; its inputs."""
    d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads * cfg.head_dim
    qkv = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
    rs = np.random.RandomState(0)
    w = lambda i, o: jnp.asarray(rs.standard_normal((i, o)) / np.sqrt(i), cfg.compute_dtype)  # keeps |x| ~ 1
    layers = [(w(d, qkv), w(hd, d), w(d, 2 * f), w(f, d)) for _ in range(cfg.num_layers)]
    head = w(d, cfg.vocab_size)
    x0 = jnp.asarray(rs.standard_normal((rows, d)), cfg.compute_dtype)

    def step(_, x):
        for wqkv, wo, wgu, wd in layers:
            x = (((x @ wqkv)[:, :hd] @ wo) @ wgu)[:, :f] @ wd
        return (x @ head)[:, :d]

    fn = jax.jit(lambda x: jax.lax.fori_loop(0, steps, step, x))
    return lambda: fn(x0).block_until_ready()


def bench(size: str, batch: int, repeats: int, hf, cfg, params) -> dict:
    import torch

    p, n = SHAPES[size]["prompt"], SHAPES[size]["new"]
    rs = np.random.RandomState(batch)
    prompts = rs.randint(3, cfg.vocab_size, (batch, p)).astype(np.int32)
    plens = np.full((batch,), p, np.int32)
    scfg = SamplingConfig(max_new_tokens=n, temperature=1.0)  # no EOS: exactly n tokens per row

    def ours_generate(seed):
        generate(RolloutEnv(params, cfg, scfg), prompts, plens, jax.random.key(seed)).tokens.block_until_ready()

    # The decode loop alone, after the prefill and the weight layout that `generate` does first.
    room = cache_room(p + n)
    weights = jax.jit(lambda prm: model_decode.decode_weights(prm, cfg))(params)
    logits0, caches = jax.jit(lambda prm, w, pr: model_decode.prefill(prm, w, cfg, pr, jnp.asarray(plens), room))(
        params, weights, prompts)
    budget = jnp.full((batch,), n, jnp.int32)
    decode_jit = jax.jit(lambda prm, w, c, lg, k: decode(prm, cfg, scfg, c, lg, Rows(k, budget), weights=w).tokens)

    def ours_decode(seed):
        keys = row_keys(jax.random.key(seed), np.arange(batch))
        decode_jit(params, weights, caches, logits0, keys).block_until_ready()

    ids = torch.tensor(prompts, dtype=torch.long)

    def peer(new):
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_k=0,
                              top_p=1.0, max_new_tokens=new, min_new_tokens=new, pad_token_id=0)
        assert out.shape == (batch, p + new)

    matmuls = matmul_loop(cfg, batch, n - 1)
    ours_generate(0), ours_decode(0), peer(n), peer(1), matmuls()  # compile / warm up
    runs = {k: [] for k in ("gen", "dec", "peer_gen", "peer_one", "mm")}
    peaks = []
    for i in range(repeats):
        peaks.append(common.matmul_peak())
        runs["gen"].append(common.clocked(lambda: ours_generate(i + 1)))
        runs["dec"].append(common.clocked(lambda: ours_decode(i + 1)))
        runs["peer_gen"].append(common.clocked(lambda: peer(n)))
        runs["peer_one"].append(common.clocked(lambda: peer(1)))
        runs["mm"].append(common.clocked(matmuls))
    flops = decode_flops(cfg, batch, p, n - 1)
    wall = {k: [w for w, _ in v] for k, v in runs.items()}
    cpu = {k: [c for _, c in v] for k, v in runs.items()}
    med = lambda xs: common.median(xs)
    peer_dec = {clock: [a - b for a, b in zip(t["peer_gen"], t["peer_one"])] for clock, t in (("wall", wall), ("cpu", cpu))}
    r = dict(
        gen_tps=batch * n / med(wall["gen"]), peer_gen_tps=batch * n / med(wall["peer_gen"]),
        dec_tps=batch * (n - 1) / med(wall["dec"]), peer_dec_tps=batch * (n - 1) / med(peer_dec["wall"]),
        dec_ratio_cpu=med(peer_dec["cpu"]) / med(cpu["dec"]),
        dec_vs_mm=med([a / b for a, b in zip(wall["dec"], wall["mm"])]),
        dec_vs_mm_cpu=med([a / b for a, b in zip(cpu["dec"], cpu["mm"])]),
        peak=med([pw for pw, _ in peaks]), peak_cpu=med([pc for _, pc in peaks]),
        fraction=med([flops / c / pc for c, (_, pc) in zip(cpu["dec"], peaks)]),
        fraction_wall=med([flops / w / pw for w, (pw, _) in zip(wall["dec"], peaks)]),
        mm_fraction=med([flops / c / pc for c, (_, pc) in zip(cpu["mm"], peaks)]),
    )
    r["gen_ratio"], r["dec_ratio"] = r["gen_tps"] / r["peer_gen_tps"], r["dec_tps"] / r["peer_dec_tps"]
    print(f"{size} batch {batch} ({p} prompt + {n} new tokens), medians of {repeats}:\n"
          f"  generate: ours {r['gen_tps']:,.0f} tok/s, transformers {r['peer_gen_tps']:,.0f} tok/s, "
          f"ratio {r['gen_ratio']:.2f}\n"
          f"  decode (prefill excluded): ours {r['dec_tps']:,.0f} tok/s ({med(wall['dec']) * 1e3:.0f} ms), "
          f"transformers {r['peer_dec_tps']:,.0f} tok/s, ratio {r['dec_ratio']:.2f} (CPU-time ratio "
          f"{r['dec_ratio_cpu']:.2f})\n"
          f"  matmuls alone {med(wall['mm']) * 1e3:.0f} ms: decode / matmuls {r['dec_vs_mm']:.2f} wall, "
          f"{r['dec_vs_mm_cpu']:.2f} CPU time\n"
          f"  peak {r['peak'] / 1e9:.1f} GFLOP/s wall, {r['peak_cpu'] / 1e9:.1f} GFLOP per CPU-s; decode at "
          f"{r['fraction']:.2f} of peak per CPU-s ({r['fraction_wall']:.2f} wall), the matmuls alone at "
          f"{r['mm_fraction']:.2f}", flush=True)
    return r


def parse_batches(spec: list[str]) -> dict:
    out = {"tiny": [32, 64], "100m": [64]}
    for item in spec or []:
        size, _, bs = item.partition(":")
        out[size] = [int(b) for b in bs.split(",")]
    return out


def main():
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="tiny,100m")
    ap.add_argument("--batches", nargs="*", help="size:b1,b2 (default tiny:32,64 100m:64)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--torch-threads", type=int, default=0, help="0: the faster of 1 and all cores")
    args = ap.parse_args()
    batches = parse_batches(args.batches)
    print(common.machine_line(), flush=True)
    results = {}
    for size in args.sizes.split(","):
        hf, cfg, params = common.build_models(size)
        # torch's intra-op threads spin-wait; on shared cores that can collapse throughput,
        # so give the peer its faster setting of (all cores, 1 thread), measured once per size.
        best = {}
        if args.torch_threads:
            best[args.torch_threads] = 0.0
        else:
            ids = torch.randint(3, cfg.vocab_size, (16, SHAPES[size]["prompt"]))
            for threads in (os.cpu_count(), 1):
                torch.set_num_threads(threads)
                with torch.no_grad():
                    run = lambda n: hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                                min_new_tokens=n, do_sample=False, pad_token_id=0)
                    run(2)
                    best[threads] = common.timed(lambda: run(8))[0]
        torch.set_num_threads(min(best, key=best.get))
        print(f"{size}: torch threads {torch.get_num_threads()} (8-token greedy times {best})", flush=True)
        for b in batches.get(size, []):
            results[size, b] = bench(size, b, args.repeats, hf, cfg, params)
    if ("100m", 64) in results:
        print(f"decode peak fraction 100m: {results['100m', 64]['fraction']:.2f}")
    if ("tiny", 64) in results:
        print(f"decode vs matmul time tiny: {results['tiny', 64]['dec_vs_mm']:.2f}")
    if ("tiny", 32) in results:
        r = results["tiny", 32]
        print(f"generate ratio: {r['gen_tps'] / r['peer_gen_tps']:.2f}")


if __name__ == "__main__":
    main()
