"""Train-step benchmark: the RL policy step (`train.update.policy_step`) against a plain
`jax.value_and_grad` cross-entropy step of the same model and optimizer, with MFU.

Run: python benchmarks/train.py [--sizes tiny,100m] [--shapes tiny:8x256,64x128 100m:8x256]
[--micro 100m:64x128=16] [--repeats 2]   (CPU; the default run takes a few minutes on 2 cores;
add `--shapes 100m:8x256,64x128` for the big optimizer batch).

A shape `B x T` is one optimizer batch of B rows of T tokens; `--micro size:BxT=m` splits it into
micro-batches of m rows (gradient accumulation inside the step) when memory requires. Both steps
are compiled ahead of time and then timed interleaved with a matmul peak probe (medians):
* tokens/s = B·T ÷ step time (wall);
* MFU = (6·N + 12·L·H·Dh·T)·B·T FLOP per CPU second of the step ÷ the 1024³ fp32 matmul's FLOP
  per CPU second measured in the same repeat (N = parameters used in matmuls: layers + LM head;
  the second term counts attention). CPU time because this shared machine's wall-clock rate
  changes several-fold within a minute; the wall-clock MFU is printed too;
* "rl step vs plain step" = RL step time ÷ plain step time (what the RL loss, its log-probs,
  entropy, whitening, ratio rule and update guard add).
The last lines are `train mfu 100m: X` (RL step, 8 x 256) and `rl step vs plain step: X` (100m,
8 x 256; tiny when 100m is not run).
"""
from __future__ import annotations

import argparse
import functools

import common
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vinejax.config import base_config
from vinejax.model import llama
from vinejax.model.config import ModelConfig
from vinejax.rl.batch import RolloutBatch
from vinejax.rl.logprobs import token_logprobs
from vinejax.rl.losses import PolicyLossConfig
from vinejax.train.update import make_optimizer, policy_step

TEMPERATURE = 0.6


def model_config(size: str) -> ModelConfig:
    s = common.SIZES[size]
    return ModelConfig(vocab_size=s["vocab_size"], hidden_size=s["hidden_size"],
                       intermediate_size=s["intermediate_size"], num_layers=s["num_hidden_layers"],
                       num_heads=s["num_attention_heads"], num_kv_heads=s["num_key_value_heads"],
                       head_dim=s["hidden_size"] // s["num_attention_heads"], max_position_embeddings=2048)


def rollout_batch(cfg: ModelConfig, rows: int, length: int, micro: int) -> RolloutBatch:
    """A random optimizer batch [rows // micro, micro, length]: a quarter prompt, responses of
    varying length, old/ref log-probs near those of a random model."""
    rs = np.random.RandomState(0)
    tokens = rs.randint(3, cfg.vocab_size, (rows, length)).astype(np.int32)
    col = np.arange(length)[None]
    end = rs.randint(length // 2, length + 1, (rows, 1))
    mask = (col >= length // 4) & (col < end)
    lp = np.where(mask, -np.log(cfg.vocab_size) + rs.normal(0, 0.1, (rows, length)), 0).astype(np.float32)
    adv = np.where(mask, rs.normal(0, 1, (rows, length)), 0).astype(np.float32)
    b = RolloutBatch(tokens=tokens, response_mask=mask, old_logprobs=lp, ref_logprobs=lp,
                     advantages=adv, rewards=rs.randint(0, 2, rows).astype(np.float32))
    return jax.tree.map(lambda x: jnp.asarray(x.reshape((rows // micro, micro) + x.shape[1:])), b)


@functools.partial(jax.jit, static_argnames=("model_cfg", "optimizer"), donate_argnums=(0, 1))
def plain_step(params, opt_state, tokens, mask, *, model_cfg, optimizer):
    """The peer: value_and_grad of the mean token cross-entropy over `mask`, then the optimizer.
    tokens/mask [M, mb, T]; micro-batches (M > 1) are accumulated with a scan like the RL step."""

    def loss_fn(p, toks, m):
        logits, _ = llama.forward(p, model_cfg, toks)
        lp = token_logprobs(logits, toks, TEMPERATURE)
        return -(lp * m).sum() / jnp.maximum(mask.sum(), 1)

    grad_fn = jax.value_and_grad(loss_fn)
    if tokens.shape[0] == 1:
        loss, grads = grad_fn(params, tokens[0], mask[0])
    else:
        def body(carry, xs):
            l, g = grad_fn(params, *xs)
            return jax.tree.map(jnp.add, carry, (l, g)), None

        (loss, grads), _ = jax.lax.scan(body, (jnp.zeros(()), jax.tree.map(jnp.zeros_like, params)), (tokens, mask))
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def train_flops(cfg: ModelConfig, rows: int, length: int) -> float:
    per_token = 6 * common.matmul_params(cfg) + 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * length
    return per_token * rows * length


def bench(size: str, rows: int, length: int, micro: int, repeats: int) -> dict:
    cfg = model_config(size)
    optimizer = make_optimizer(base_config().optim, total_steps=1000)
    loss_cfg = PolicyLossConfig()
    batch = rollout_batch(cfg, rows, length, micro)
    init = lambda: llama.init_params(cfg, jax.random.key(0))
    state = {"rl": None, "plain": None}
    for k in state:
        p = init()
        state[k] = (p, optimizer.init(p))
    rl = policy_step.lower(*state["rl"], batch, model_cfg=cfg, loss_cfg=loss_cfg, optimizer=optimizer,
                           temperature=TEMPERATURE).compile()
    plain = plain_step.lower(*state["plain"], batch.tokens, batch.response_mask, model_cfg=cfg,
                             optimizer=optimizer).compile()

    def run_rl():
        p, o, m = rl(*state["rl"], batch)
        jax.block_until_ready(m)
        state["rl"] = (p, o)

    def run_plain():
        p, o, loss = plain(*state["plain"], batch.tokens, batch.response_mask)
        jax.block_until_ready(loss)
        state["plain"] = (p, o)

    runs = {"rl": [], "plain": []}
    peaks = []
    for i in range(repeats):
        peaks.append(common.matmul_peak())
        order = (("rl", run_rl), ("plain", run_plain)) if i % 2 == 0 else (("plain", run_plain), ("rl", run_rl))
        for name, fn in order:
            runs[name].append(common.clocked(fn))
    flops = train_flops(cfg, rows, length)
    med = common.median
    wall = {k: [w for w, _ in v] for k, v in runs.items()}
    cpu = {k: [c for _, c in v] for k, v in runs.items()}
    mfu = lambda k: med([flops / c / pc for c, (_, pc) in zip(cpu[k], peaks)])
    r = {
        "rl_tps": rows * length / med(wall["rl"]),
        "plain_tps": rows * length / med(wall["plain"]),
        "rl_mfu": mfu("rl"), "plain_mfu": mfu("plain"),
        "rl_mfu_wall": med([flops / w / pw for w, (pw, _) in zip(wall["rl"], peaks)]),
        "ratio": med([a / b for a, b in zip(wall["rl"], wall["plain"])]),
        "ratio_cpu": med([a / b for a, b in zip(cpu["rl"], cpu["plain"])]),
        "peak": med([pw for pw, _ in peaks]), "peak_cpu": med([pc for _, pc in peaks]),
    }
    print(f"{size} {rows} x {length} (micro-batch {micro}), medians of {repeats}:\n"
          f"  RL step {r['rl_tps']:,.0f} tok/s ({med(wall['rl']):.2f} s), MFU {r['rl_mfu']:.2f} per CPU-s "
          f"({r['rl_mfu_wall']:.2f} wall)\n"
          f"  plain step {r['plain_tps']:,.0f} tok/s ({med(wall['plain']):.2f} s), MFU {r['plain_mfu']:.2f} per CPU-s\n"
          f"  RL / plain step time {r['ratio']:.2f} wall, {r['ratio_cpu']:.2f} CPU time; peak "
          f"{r['peak'] / 1e9:.1f} GFLOP/s wall, {r['peak_cpu'] / 1e9:.1f} GFLOP per CPU-s", flush=True)
    return r


def parse(spec, default, value):
    out = dict(default)
    for item in spec or []:
        size, _, rest = item.partition(":")
        out[size] = value(rest)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="tiny,100m")
    ap.add_argument("--shapes", nargs="*", help="size:BxT,BxT (default tiny:8x256,64x128 100m:8x256)")
    ap.add_argument("--micro", nargs="*", help="size:BxT=m micro-batch rows (default: B)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    shapes = parse(args.shapes, {"tiny": ["8x256", "64x128"], "100m": ["8x256"]}, lambda s: s.split(","))
    micro = {}
    for item in args.micro or []:
        size, _, rest = item.partition(":")
        shape, _, m = rest.partition("=")
        micro[size, shape] = int(m)
    print(common.machine_line(), flush=True)
    results = {}
    for size in args.sizes.split(","):
        for shape in shapes.get(size, []):
            rows, length = (int(x) for x in shape.split("x"))
            results[size, shape] = bench(size, rows, length, micro.get((size, shape), rows), args.repeats)
    if ("100m", "8x256") in results:
        print(f"train mfu 100m: {results['100m', '8x256']['rl_mfu']:.2f}")
    key = ("100m", "8x256") if ("100m", "8x256") in results else next(iter(results))
    print(f"rl step vs plain step: {results[key]['ratio']:.2f}")


if __name__ == "__main__":
    main()
