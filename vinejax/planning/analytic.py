"""Per-device memory of each phase as a formula: a cross-check of the compiled numbers that
names where the bytes go.

Terms (bytes on one device; B_dev = rows / data-parallel size, heads, KV heads, MLP and vocab
divided by the tensor-parallel size where it divides them; dt = compute dtype size):

* params, optimizer state (Adam: 2 x params, sharded like them), gradients (2 x params: the
  accumulator over micro-batches and one micro-batch's gradient), resident state (the other
  state the run keeps beside the program, e.g. the KL reference policy).
* activations per token of one layer, kept for the backward pass:
  dt·(4D + 3(H + Hkv)·Dh + 4F) + 8D (float32 norms) + (4 + dt)·H·S (attention probabilities
  over S keys, float32 and compute dtype). Without remat every layer keeps them (+ one layer's
  gradients); with remat (`model.remat`) a layer keeps only its input (dt·D per token) and one
  layer is recomputed at a time (2 x one layer). A forward pass alone (scoring, prefill, the MC
  trajectory pass) holds one layer at a time, with two float32 copies of the attention scores.
* logits: float32 [tokens, V]: 4 copies in a train step (logits, log-softmax, softmax for the
  entropy, their gradient), 2 when scoring.
* KV cache: 2·L·rows·slots·Hkv·Dh·dt. `generate` with every row at once holds it once per
  sampled row (the prefill writes the per-layer decode caches itself) plus, with several samples
  per prompt, the prompts' cache while it is repeated. A refill loop (`generate` above
  `sampling.decode_rows` rows, the MC phase) holds its slots' cache plus the rows one refill
  copies in (`refills_per_step` per device), twice (the loop's cache and the refilled copy), its source (the prompts' pass and cache, or the MC
  group's trajectory cache, an argument counted as it is sharded: each device reads only its own
  rows) and its queue's outputs (tokens and log-probs of every row, 8 bytes per token). Sampling
  also holds the per-layer decode weights in the compute dtype and [rows, V] float32 sampling
  buffers (~6 copies). The trajectory pass and its cache hold one group of
  `vineppo.episodes_per_group` episodes.
"""
from __future__ import annotations

from vinejax import sharding
from vinejax.model.config import ModelConfig
from vinejax.planning.phases import Lengths, Phase, device_bytes


class _Dims:
    """Per-device sizes of a model on a mesh."""

    def __init__(self, m: ModelConfig, mesh):
        tp = mesh.shape.get("tensor", 1)
        split = lambda n: n // tp if n % tp == 0 else n
        self.m, self.dt = m, m.compute_dtype.itemsize
        self.dp = sharding.data_parallel_size(mesh)
        self.heads, self.kv_heads = split(m.num_heads), split(m.num_kv_heads)
        self.mlp, self.vocab = split(m.intermediate_size), split(m.vocab_size)

    def rows(self, n: int) -> int:
        return -(-n // self.dp)

    def layer_saved(self, tokens: int, keys: int, score_f32: int = 1) -> int:
        """Bytes one layer keeps for its backward pass over `tokens` tokens attending to `keys` keys
        (`score_f32` float32 copies of the attention scores, plus one in the compute dtype)."""
        m, dt = self.m, self.dt
        per_token = (dt * (4 * m.hidden_size + 3 * (self.heads + self.kv_heads) * m.head_dim + 4 * self.mlp)
                     + 8 * m.hidden_size + (4 * score_f32 + dt) * self.heads * keys)
        return tokens * per_token

    def layer_forward(self, tokens: int, keys: int) -> int:
        """Peak bytes of one layer's forward pass without a backward: nothing is kept for a
        gradient, so at once it holds its input and residual, the fused q/k/v, the MLP's gate and
        up, and the scores and softmax (2 float32 copies)."""
        m = self.m
        per_token = (self.dt * (2 * m.hidden_size + (self.heads + 2 * self.kv_heads) * m.head_dim + 2 * self.mlp)
                     + 8 * self.heads * keys)
        return tokens * per_token

    def kv(self, rows: int, slots: int) -> int:
        m = self.m
        return 2 * m.num_layers * rows * slots * self.kv_heads * m.head_dim * self.dt

    def decode_weights(self, params_bytes: int) -> int:
        """The per-layer weights cast to the compute dtype for the decode loop."""
        return params_bytes * self.dt // self.m.weight_dtype.itemsize


def breakdown(phase: Phase, run, lengths: Lengths) -> dict:
    """{term: bytes per device} of `phase` (see the module docstring); 'total' sums the terms
    with the config's remat; train steps also give 'activations_remat' / 'activations_no_remat'."""
    d = _Dims(phase.kwargs.get("model_cfg") or phase.kwargs.get("cfg"), run.mesh)
    params = device_bytes(phase.args[0])
    out = {"params": params, "resident": sum(device_bytes(t) for t in phase.resident.values())}
    name, v = phase.name, phase.value
    if name in ("policy_step", "critic_step", "sft_step"):
        tokens = d.rows(v) * (lengths.sft if name == "sft_step" else lengths.train)
        keys = lengths.sft if name == "sft_step" else lengths.train
        one = d.layer_saved(tokens, keys)
        remat = d.m.num_layers * tokens * d.dt * d.m.hidden_size + 2 * one
        no_remat = (d.m.num_layers + 1) * one
        out |= {"optimizer": device_bytes(phase.args[1]), "gradients": 2 * params,
                "inputs": device_bytes(phase.args[2:]), "activations_remat": remat, "activations_no_remat": no_remat,
                "activations": remat if d.m.remat else no_remat,
                "logits": 0 if name == "critic_step" else 4 * tokens * d.vocab * 4}
    elif name in ("score", "critic_score"):
        tokens = d.rows(v) * lengths.train
        out |= {"activations": d.layer_forward(tokens, lengths.train), "inputs": device_bytes(phase.args[1:]),
                "logits": 0 if name == "critic_score" else 2 * tokens * d.vocab * 4}
    elif name == "trajectory":  # one group of vineppo.episodes_per_group episodes
        r, cols = d.rows(phase.args[1].shape[0]), phase.args[1].shape[1]
        out |= {"activations": d.layer_forward(r * cols, cols) + r * cols * d.m.hidden_size * d.dt,
                "kv_cache": d.kv(r, cols)}
    elif name in ("generate", "eval_generate") and "plan" not in phase.kwargs:  # every row at once
        kw = phase.kwargs
        tokens = phase.args[1][0]  # (tokens, lengths)
        prompts, samples, room = tokens.shape[0], kw["num_samples"], kw["room"]
        r = d.rows(prompts * samples)
        prefill = d.layer_forward(d.rows(prompts) * tokens.shape[1], room)
        shared = d.kv(d.rows(prompts), room) if samples > 1 else 0  # the prompts' cache, repeated per sample
        out |= {"decode_weights": d.decode_weights(params), "kv_cache": d.kv(r, room) + shared,
                "activations": prefill, "logits": 6 * r * d.m.vocab_size * 4}
    elif name in ("generate", "eval_generate", "mc"):  # refilled slots
        plan, queue = phase.kwargs["plan"], phase.args[-2]
        slots, m = d.rows(plan.slots), plan.refills_per_step
        n_rows, n_new = queue.budget.shape[0], phase.kwargs["scfg"].max_new_tokens
        out |= {"decode_weights": d.decode_weights(params), "kv_cache": 2 * d.kv(slots + m, plan.room),
                "logits": 6 * slots * d.m.vocab_size * 4, "outputs": 8 * n_rows * n_new}
        if name == "mc":
            out["trajectory"] = device_bytes(phase.args[1])
        else:  # the prompts' pass and cache
            p, cols = d.rows(phase.args[1][0].shape[0]), phase.args[1][0].shape[1]  # prompts (tokens, lengths)
            out |= {"activations": d.layer_forward(p * cols, cols) + p * cols * d.m.hidden_size * d.dt,
                    "trajectory": d.kv(p, cols)}
    out["total"] = sum(b for k, b in out.items() if k not in ("activations_remat", "activations_no_remat"))
    return out

