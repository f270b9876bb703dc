"""The jitted programs of a run, with abstract sharded arguments, ready to lower ahead of time.

A `Phase` is one program a run compiles (the same jitted function the run calls) at the config's
sizes, with `jax.ShapeDtypeStruct` arguments laid out as the run lays them out, and the state
that stays on the devices beside it (`resident`: e.g. the frozen reference policy and the PPO
critic while the policy trains). With `model.lora` the policy every phase samples and scores with
is the frozen base with its adapters attached (`lora.attach`: no merged copy), and the update
steps train the adapters with the base as an argument.

| phase          | program                                   | size set by                | algos   |
| -------------- | ----------------------------------------- | -------------------------- | ------- |
| generate       | `generation.generate_refill_program` [1]  | sampling.decode_rows       | RL      |
| eval_generate  | `generation.generate_refill_program` [1]  | sampling.decode_rows       | all     |
| score          | `scoring.logprob_scorer`                  | sampling.batch_size        | RL      |
| critic_score   | `scoring.value_scorer`                    | sampling.batch_size        | ppo     |
| trajectory     | `continuation.trajectory_program`         | vineppo.episodes_per_group | vineppo |
| mc             | `continuation.refill_program`             | vineppo.chunk_rows         | vineppo |
| policy_step    | `update.policy_step`                      | ppo.micro_batch            | RL      |
| critic_step    | `update.critic_step`                      | ppo.micro_batch            | ppo     |
| sft_step       | `update.sft_step`                         | sft.micro_batch            | sft     |

[1] `generation.generate_program` (every row at once) when `sampling.decode_rows` is 0 or not
below a call's rows (`sampling.batch_size` prompts x their samples), as `generate` chooses.

Lengths are the longest the config allows (`lengths_of`): prompts of `task.max_prompt_tokens`
tokens (or a given `prompt_len`) and responses of the whole budget, bucketed as the run buckets.
The MC phase decodes one group's queue of continuations: `vineppo.episodes_per_group` episodes ×
`PLANNED_STATES` states (or `vineppo.max_estimated_states` + 1 when smaller) × K rows, whose
outputs it holds.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vinejax import sampling, sharding
from vinejax.model import llama, lora
from vinejax.rl import pooling
from vinejax.rl.batch import RolloutBatch
from vinejax.rl.values import rollouts_by_step
from vinejax.sampling.continuation import TrajectoryCache, refill_program, trajectory_program
from vinejax.sampling.core import Rows, bucket, cache_room
from vinejax.sampling.generation import generate_program, generate_refill_program
from vinejax.sampling.refill import HIDDEN_AXES, Queue, RefillPlan
from vinejax.tasks import get_task
from vinejax.train import encode, update
from vinejax.train.context import RunContext, mc_group_rows
from vinejax.train.scoring import logprob_scorer, value_scorer

RL_ALGOS = ("vineppo", "ppo", "grpo", "rloo")
PLANNED_STATES = 32  # states per episode the MC phase is planned for when vineppo.max_estimated_states does not cap them


@dataclasses.dataclass(frozen=True)
class Lengths:
    """Token lengths of the planned programs (the longest the config allows)."""

    prompt: int  # the longest prompt, BOS included
    episode_cols: int  # columns of the sampled rows (prompt width + max_new_tokens): the MC trajectory pass
    train: int  # columns of a train / scoring batch: prompt + response, bucketed (`encode.length_bucket`)
    sft: int  # columns of an SFT batch


def lengths_of(run: RunContext, prompt_len: Optional[int] = None) -> Lengths:
    """The longest lengths of `run`'s config; `prompt_len` replaces `task.max_prompt_tokens`."""
    cfg = run.cfg
    prompt = int(prompt_len or cfg.task.max_prompt_tokens)
    if not 1 <= prompt <= run.context_size:
        raise ValueError(f"prompt length {prompt} must be in [1, {run.context_size}] (model.context_size)")
    total = min(prompt + cfg.sampling.max_new_tokens, run.context_size + 1)
    return Lengths(prompt=prompt, episode_cols=prompt + cfg.sampling.max_new_tokens,
                   train=encode.length_bucket(total), sft=encode.length_bucket(cfg.sft.max_seq_len))


@dataclasses.dataclass(frozen=True)
class Phase:
    """One jitted program with abstract arguments: `fn.lower(*args, **kwargs)` under the mesh."""

    name: str
    knob: Optional[str]  # the config key whose value sizes it (None: fixed by the config)
    value: Optional[int]  # that key's value planned here
    fn: Any  # the jitted function
    args: tuple  # abstract (sharded) arguments
    kwargs: dict  # static arguments
    resident: dict  # {state name: abstract pytree} on the devices beside it
    sizes: str  # the shapes in words

    def lower(self, run: RunContext):
        with run.mesh_context():
            return self.fn.lower(*self.args, **self.kwargs)


def abstract(tree, shardings):
    """`jax.ShapeDtypeStruct`s of a tree of shapes/arrays with a matching tree of shardings."""
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), tree, shardings)


def device_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded `jax.ShapeDtypeStruct`s / arrays (the largest shard)."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize  # (PRNG key dtypes have one too)
               for x in jax.tree.leaves(tree) if x is not None)


def state_trees(run: RunContext) -> dict:
    """The abstract state a run keeps on its devices: policy params and optimizer state, and for RL
    the frozen reference policy, for PPO the critic and its optimizer state. With LoRA the policy
    is the frozen base (in `model.param_dtype`) with float32 adapters attached (`lora.attach`), the
    optimizer state that of the adapters, and the reference is the base itself (no copy)."""
    cfg = run.cfg
    params = abstract(llama.param_shapes(run.model_cfg), run.param_shardings)
    optimizer = run.optimizer if cfg.algo in RL_ALGOS else update.make_optimizer(cfg.optim, 1000)
    if run.lora:
        adapters = abstract(lora.adapter_shapes(run.model_cfg), run.adapter_shardings)
        return {"params": lora.attach(params, adapters),
                "opt_state": _opt_state(optimizer, adapters, run.adapter_shardings)}
    out = {"params": params, "opt_state": _opt_state(optimizer, params, run.param_shardings)}
    if cfg.algo in RL_ALGOS:
        out["ref_params"] = params
    if run.critic_cfg is not None:
        critic = abstract(llama.param_shapes(run.critic_cfg), run.critic_shardings)
        out["critic"] = critic
        out["critic_opt"] = _opt_state(run.critic_optimizer, critic, run.critic_shardings)
    return out


def _opt_state(optimizer, params, shardings):
    return abstract(jax.eval_shape(optimizer.init, params), update.opt_state_shardings(optimizer, params, shardings))


def phase_names(cfg) -> list[str]:
    """The programs a run of `cfg` compiles, in the order it runs them."""
    names = []
    if cfg.algo in RL_ALGOS:
        names += ["generate", "score"]
        if cfg.algo == "ppo":
            names.append("critic_score")
        if cfg.algo == "vineppo":
            names += ["trajectory", "mc"]
        names.append("policy_step")
        if cfg.algo == "ppo":
            names.append("critic_step")
    else:
        names.append("sft_step")
    if cfg.eval.samples_per_problem > 0:
        names.append("eval_generate")
    return names


KNOBS = {
    "generate": "sampling.decode_rows", "eval_generate": "sampling.decode_rows", "score": "sampling.batch_size",
    "critic_score": "sampling.batch_size", "trajectory": "vineppo.episodes_per_group", "mc": "vineppo.chunk_rows",
    "policy_step": "ppo.micro_batch", "critic_step": "ppo.micro_batch", "sft_step": "sft.micro_batch",
}


def config_value(cfg, key: str) -> Any:
    """The value of a dotted config key."""
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def build_phase(name: str, run: RunContext, lengths: Lengths, value: Optional[int] = None) -> Phase:
    """Phase `name` of `run` with its knob at `value` (default: the config's)."""
    if name not in KNOBS:
        raise ValueError(f"unknown phase {name!r}; phases: {', '.join(KNOBS)}")
    knob = KNOBS[name]
    if knob is not None and value is None:
        value = int(config_value(run.cfg, knob))
    return _BUILDERS[name](_Parts(run, lengths, state_trees(run)), value)


@dataclasses.dataclass(frozen=True)
class _Parts:
    run: RunContext
    lengths: Lengths
    state: dict

    @property
    def mesh(self):
        return self.run.mesh

    @property
    def dp(self) -> int:
        return sharding.data_parallel_size(self.run.mesh)

    def replicated(self, shape, dtype) -> jax.ShapeDtypeStruct:
        """A host array the run passes to a jitted call as is (placed whole on every device)."""
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.replicated(self.mesh))

    def batched(self, shape, dtype) -> jax.ShapeDtypeStruct:
        """[B, ...] with B over the data axes (`batching.to_device_batch`)."""
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.batch_sharding(self.mesh, len(shape)))

    def micro(self, shape, dtype) -> jax.ShapeDtypeStruct:
        """[M, mb, ...] with mb over the data axes (`batching.to_microbatches`)."""
        spec = sharding.batch_sharding(self.mesh, len(shape) - 1).spec
        return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(self.mesh, P(None, *spec)))

    def queue(self, rows_per_device: int) -> Queue:
        """A refill queue of `rows_per_device` rows on each data-parallel device (host arrays)."""
        n, i32 = self.dp * rows_per_device, jnp.int32
        return Queue(self.replicated((n,), i32), self.replicated((n,), i32), self.replicated((n,), i32), self.keys(n),
                     self.replicated((n,), i32), self.replicated((self.dp,), i32))

    def refill_plan(self, slots: int, rows_per_device: int, room: int) -> RefillPlan:
        """`continuation.prepare`'s plan: at most `slots` over all devices, refills slots // 8 per device."""
        rl = min(bucket(slots, multiple_of=self.dp) // self.dp, rows_per_device)
        return RefillPlan(rl * self.dp, room, max(1, rl // 8))

    def keys(self, rows: int) -> jax.ShapeDtypeStruct:
        shape = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), rows))
        return jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=sharding.replicated(self.mesh))

    def stop_table(self) -> Optional[jax.ShapeDtypeStruct]:
        """int32[S, V] of the task's stop strings: the byte automaton has 1 + (their bytes) states."""
        c = self.run.cfg.task
        strings = [s for s in get_task(c.name, **dict(c.options)).stop_strings if s]
        if not strings:
            return None
        states = 1 + sum(len(s.encode("utf-8")) for s in strings)
        return self.replicated((states, self.run.model_cfg.vocab_size), jnp.int32)

    def resident(self, *taken: str) -> dict:
        return {k: v for k, v in self.state.items() if k not in taken}

    def sampling_config(self, max_new: int, temperature: float, top_p: float, top_k: int = 0):
        m = self.run.model_cfg
        eos = m.eos_token_id if isinstance(m.eos_token_id, int) else 2
        pad = m.pad_token_id if isinstance(m.pad_token_id, int) else eos
        return sampling.SamplingConfig(max_new_tokens=max_new, temperature=temperature, top_p=top_p, top_k=top_k,
                                       eos_ids=(eos,), pad_id=pad)

    def need_multiple(self, key: str, value: int) -> None:
        if value < 1 or value % self.dp:
            raise ValueError(f"config key {key!r}: {value} is not a multiple of the data-parallel size {self.dp}")


def _generate(parts: _Parts, name: str, slots: int, samples: int, max_new: int, context: int, scfg) -> Phase:
    """`generate`'s jitted core as `generate` calls it on `sampling.batch_size` prompts (bucketed):
    every row at once (one prefill per prompt) when `slots` (`sampling.decode_rows`; 0 = every
    row) covers them, else the prompts' cache and `slots` refilled slots."""
    prompts = parts.run.cfg.sampling.batch_size
    parts.need_multiple("sampling.batch_size", prompts)
    bb = bucket(prompts, multiple_of=parts.dp)
    pb = bucket(parts.lengths.prompt, minimum=16)
    rows = bb * samples
    i32 = jnp.int32
    tokens, lens = parts.replicated((bb, pb), i32), parts.replicated((bb,), i32)
    if slots <= 0 or bucket(slots, multiple_of=parts.dp) >= rows:
        room = min(pb + max_new, cache_room(min(parts.lengths.prompt + max_new, context + 1)))
        args = (parts.state["params"], (tokens, lens), Rows(parts.keys(rows), parts.replicated((rows,), i32)),
                parts.stop_table())
        kwargs = dict(cfg=parts.run.model_cfg, scfg=scfg, num_samples=samples, room=room)
        return Phase(name, "sampling.decode_rows", rows, generate_program, args, kwargs, parts.resident("params"),
                     f"{bb} prompts x {samples} samples at once, prompt {pb}, cache {room} slots, {max_new} new tokens")
    room = cache_room(min(parts.lengths.prompt + max_new, context + 1))
    per_device = bucket(-(-rows // parts.dp))
    plan = parts.refill_plan(slots, per_device, room)
    args = (parts.state["params"], (tokens, lens), parts.queue(per_device), parts.stop_table())
    kwargs = dict(cfg=parts.run.model_cfg, scfg=scfg, plan=plan)
    return Phase(name, "sampling.decode_rows", slots, generate_refill_program, args, kwargs, parts.resident("params"),
                 f"{bb} prompts x {samples} samples through {plan.slots} slots, prompt cache {pb}, slot cache {room}, "
                 f"{max_new} new tokens")


def _rl_generate(parts: _Parts, value: int) -> Phase:
    s, run = parts.run.cfg.sampling, parts.run
    scfg = parts.sampling_config(s.max_new_tokens, s.temperature, s.top_p, s.top_k)
    return _generate(parts, "generate", value, s.samples_per_problem, s.max_new_tokens, run.context_size, scfg)


def _eval_generate(parts: _Parts, value: int) -> Phase:
    e, run = parts.run.cfg.eval, parts.run
    scfg = parts.sampling_config(e.max_new_tokens, e.temperature, e.top_p)
    return _generate(parts, "eval_generate", value, e.samples_per_problem, e.max_new_tokens, run.eval_context_size,
                     scfg)


def _score(parts: _Parts, value: int) -> Phase:
    """`score_rows` with the log-prob scorer: `sampling.batch_size` episode rows per call."""
    parts.need_multiple("sampling.batch_size", value)
    tokens = parts.batched((value, parts.lengths.train), jnp.int32)
    kwargs = dict(model_cfg=parts.run.model_cfg, temperature=parts.run.cfg.sampling.temperature)
    return Phase("score", "sampling.batch_size", value, logprob_scorer, (parts.state["params"], tokens), kwargs,
                 parts.resident("params"), f"{value} rows x {parts.lengths.train} tokens")


def _critic_score(parts: _Parts, value: int) -> Phase:
    parts.need_multiple("sampling.batch_size", value)
    tokens = parts.batched((value, parts.lengths.train), jnp.int32)
    return Phase("critic_score", "sampling.batch_size", value, value_scorer, (parts.state["critic"], tokens),
                 dict(model_cfg=parts.run.critic_cfg), parts.resident("critic"),
                 f"{value} rows x {parts.lengths.train} tokens")


def trajectory_shapes(run: RunContext, lengths: Lengths, group: Optional[int] = None) -> tuple[int, int]:
    """(rows, columns) of one MC trajectory pass: a group of `vineppo.episodes_per_group` episodes
    (the values phase goes through an iteration's episodes group by group), as wide as the sampled
    rows (prompt width + max_new_tokens), bucketed."""
    s = run.cfg.sampling
    episodes = s.problems_per_iteration * s.samples_per_problem
    spp = max(s.samples_per_problem, 1)
    group = mc_group_rows(run.cfg) if group is None else -(-group // spp) * spp  # as the run rounds it
    rows = bucket(min(episodes, group), multiple_of=sharding.data_parallel_size(run.mesh))
    return rows, bucket(lengths.episode_cols, minimum=16)


def _trajectory(parts: _Parts, value: int) -> Phase:
    """The MC trajectory pass of one group of `vineppo.episodes_per_group` episodes."""
    rows, cols = trajectory_shapes(parts.run, parts.lengths, value)
    args = (parts.state["params"], parts.replicated((rows, cols), jnp.int32), parts.replicated((rows,), jnp.int32))
    return Phase("trajectory", "vineppo.episodes_per_group", value, trajectory_program, args,
                 dict(cfg=parts.run.model_cfg), parts.resident("params"), f"{rows} episodes x {cols} tokens")


def trajectory_abstract(parts: _Parts) -> TrajectoryCache:
    """The trajectory cache of one group as the MC phase receives it: cache rows over the data
    axes (the pass constrains them so), hidden states [rows, cols, D] likewise."""
    m, (rows, cols) = parts.run.model_cfg, trajectory_shapes(parts.run, parts.lengths)
    kv_shape = (m.num_layers, rows, cols, m.num_kv_heads, m.head_dim)
    spec = lambda axes, shape: NamedSharding(parts.mesh, sharding.logical_to_spec(axes, shape, parts.mesh))
    kv = jax.ShapeDtypeStruct(kv_shape, m.compute_dtype, sharding=spec(llama.CACHE_AXES, kv_shape))
    lengths = jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=spec(("batch",), (rows,)))
    hidden_shape = (rows, cols, m.hidden_size)
    hidden = jax.ShapeDtypeStruct(hidden_shape, m.compute_dtype, sharding=spec(HIDDEN_AXES, hidden_shape))
    return TrajectoryCache(llama.KVCache(kv, kv, lengths), hidden)


def mc_queue_rows(run: RunContext, lengths: Lengths) -> int:
    """Continuation rows of one MC group as planned: its episodes (the trajectory pass's rows) ×
    the continuations of an episode's states (`PLANNED_STATES`, or the cap
    `vineppo.max_estimated_states` + 1; K each, or `vineppo.rollouts_by_step`'s counts)."""
    v = run.cfg.vineppo
    states = PLANNED_STATES if v.max_estimated_states < 0 else min(v.max_estimated_states + 1, PLANNED_STATES)
    per_episode = int(rollouts_by_step(v.num_rollouts, tuple(v.rollouts_by_step), states).sum())
    return trajectory_shapes(run, lengths)[0] * per_episode


def _mc(parts: _Parts, value: int) -> Phase:
    """The MC continuations of one group (`Trajectories.continue_from`, schedule "refill"):
    `bucket(chunk_rows)` slots refilled from the group's trajectory cache, each row with the
    largest budget the context allows, over a queue of `mc_queue_rows` rows."""
    run, s = parts.run, parts.run.cfg.sampling
    longest = parts.lengths.prompt + 2 * s.max_new_tokens  # a state late in a full-length episode, + its budget
    room = cache_room(min(longest, run.context_size + 1))
    per_device = bucket(-(-mc_queue_rows(run, parts.lengths) // parts.dp))
    plan = parts.refill_plan(value, per_device, room)
    new = s.max_new_tokens  # pooled draws: continuations decode as far as a later state's budget needs
    if run.cfg.vineppo.pool_continuations:
        new = pooling.decode_width(new, run.context_size)
    scfg = parts.sampling_config(new, s.temperature, s.top_p, s.top_k)
    args = (parts.state["params"], trajectory_abstract(parts), parts.queue(per_device), parts.stop_table())
    return Phase("mc", "vineppo.chunk_rows", value, refill_program, args, dict(cfg=run.model_cfg, scfg=scfg, plan=plan),
                 parts.resident("params"),
                 f"{plan.slots} slots, cache {room} slots, queue {per_device * parts.dp} rows, {new} new "
                 f"tokens; trajectory cache as argument")


def _rollout_batch(parts: _Parts, key: str, micro_batch: int) -> tuple[RolloutBatch, int]:
    per_step = parts.run.cfg.ppo.episodes_per_step
    parts.need_multiple(key, micro_batch)
    if per_step % micro_batch:
        raise ValueError(f"config key {key!r}: {micro_batch} does not divide ppo.episodes_per_step={per_step}")
    m, t = per_step // micro_batch, parts.lengths.train
    f32 = lambda: parts.micro((m, micro_batch, t), jnp.float32)
    ppo = parts.run.cfg.algo == "ppo"
    batch = RolloutBatch(tokens=parts.micro((m, micro_batch, t), jnp.int32),
                         response_mask=parts.micro((m, micro_batch, t), jnp.bool_), old_logprobs=f32(),
                         ref_logprobs=f32(), advantages=f32(), rewards=parts.micro((m, micro_batch), jnp.float32),
                         returns=f32() if ppo else None, old_values=f32() if ppo else None)
    return batch, m


def trained_and_inputs(parts: _Parts) -> tuple[Any, tuple]:
    """What the update steps train (the params, or with LoRA the adapters) and the trailing
    `update.StepInputs` argument (LoRA: the frozen base and, with dropout, the step's key)."""
    params = parts.state["params"]
    if not parts.run.lora:
        return params, ()
    key = parts.keys(1) if parts.run.model_cfg.lora.dropout > 0 else None
    key = None if key is None else jax.ShapeDtypeStruct((), key.dtype, sharding=key.sharding)
    return lora.adapters_of(params), (update.StepInputs(base=lora.base_of(params), dropout_key=key),)


def _policy_step(parts: _Parts, value: int) -> Phase:
    run = parts.run
    batch, m = _rollout_batch(parts, "ppo.micro_batch", value)
    kwargs = dict(model_cfg=run.model_cfg, loss_cfg=run.loss_cfg, optimizer=run.optimizer,
                  temperature=run.cfg.sampling.temperature)
    trained, inputs = trained_and_inputs(parts)
    args = (trained, parts.state["opt_state"], batch, *inputs)
    return Phase("policy_step", "ppo.micro_batch", value, update.policy_step, args, kwargs,
                 parts.resident("params", "opt_state"), f"{m} micro-batches x {value} x {parts.lengths.train} tokens")


def _critic_step(parts: _Parts, value: int) -> Phase:
    run = parts.run
    batch, m = _rollout_batch(parts, "ppo.micro_batch", value)
    kwargs = dict(model_cfg=run.critic_cfg, optimizer=run.critic_optimizer, clip_range=run.cfg.ppo.value_clip)
    args = (parts.state["critic"], parts.state["critic_opt"], batch)
    return Phase("critic_step", "ppo.micro_batch", value, update.critic_step, args, kwargs,
                 parts.resident("critic", "critic_opt"), f"{m} micro-batches x {value} x {parts.lengths.train} tokens")


def _sft_step(parts: _Parts, value: int) -> Phase:
    run, s = parts.run, parts.run.cfg.sft
    parts.need_multiple("sft.micro_batch", value)
    if s.batch_size % value:
        raise ValueError(f"config key 'sft.micro_batch': {value} does not divide sft.batch_size={s.batch_size}")
    m, t = s.batch_size // value, parts.lengths.sft
    trained, inputs = trained_and_inputs(parts)
    args = (trained, parts.state["opt_state"], parts.micro((m, value, t), jnp.int32),
            parts.micro((m, value, t), jnp.bool_), *inputs)
    kwargs = dict(model_cfg=run.model_cfg, optimizer=update.make_optimizer(run.cfg.optim, 1000))
    return Phase("sft_step", "sft.micro_batch", value, update.sft_step, args, kwargs,
                 parts.resident("params", "opt_state"), f"{m} micro-batches x {value} x {t} tokens")


_BUILDERS: dict[str, Callable[[_Parts, Optional[int]], Phase]] = {
    "generate": _rl_generate, "eval_generate": _eval_generate, "score": _score, "critic_score": _critic_score,
    "trajectory": _trajectory, "mc": _mc, "policy_step": _policy_step, "critic_step": _critic_step,
    "sft_step": _sft_step,
}
