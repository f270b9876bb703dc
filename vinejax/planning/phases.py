"""The jitted programs of a run, with abstract sharded arguments, ready to lower ahead of time.

A `Phase` is one program a run compiles (the same jitted function the run calls) at the config's
sizes, with `jax.ShapeDtypeStruct` arguments laid out as the run lays them out, and the state
that stays on the devices beside it (`resident`: e.g. the frozen reference policy and the PPO
critic while the policy trains).

| phase          | program                          | size set by            | algos        |
| -------------- | -------------------------------- | ---------------------- | ------------ |
| generate       | `sampling.generate_program`      | sampling.batch_size    | RL           |
| eval_generate  | `sampling.generate_program`      | sampling.batch_size    | all          |
| score          | `scoring.logprob_scorer`         | sampling.batch_size    | RL           |
| critic_score   | `scoring.value_scorer`           | sampling.batch_size    | ppo          |
| trajectory     | `sampling.trajectory_program`    | sampling.batch_size    | vineppo      |
| mc_chunk       | `sampling.chunk_program`         | vineppo.chunk_rows     | vineppo      |
| policy_step    | `update.policy_step`             | ppo.micro_batch        | RL           |
| critic_step    | `update.critic_step`             | ppo.micro_batch        | ppo          |
| sft_step       | `update.sft_step`                | sft.micro_batch        | sft          |

Lengths are the longest the config allows (`lengths_of`): prompts of `task.max_prompt_tokens`
tokens (or a given `prompt_len`) and responses of the whole budget, bucketed as the run buckets.
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
from vinejax.model import llama
from vinejax.rl.batch import RolloutBatch
from vinejax.sampling.core import bucket, cache_room
from vinejax.sampling.generation import generate_program
from vinejax.sampling.mc import TrajectoryCache, chunk_program, trajectory_program
from vinejax.tasks import get_task
from vinejax.train import encode, update
from vinejax.train.context import RunContext
from vinejax.train.scoring import logprob_scorer, value_scorer

RL_ALGOS = ("vineppo", "ppo", "grpo", "rloo")


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
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def state_trees(run: RunContext) -> dict:
    """The abstract state a run keeps on its devices: policy params and optimizer state, and for RL
    the frozen reference policy, for PPO the critic and its optimizer state."""
    cfg = run.cfg
    params = abstract(llama.param_shapes(run.model_cfg), run.param_shardings)
    optimizer = run.optimizer if cfg.algo in RL_ALGOS else update.make_optimizer(cfg.optim, 1000)
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
            names += ["trajectory", "mc_chunk"]
        names.append("policy_step")
        if cfg.algo == "ppo":
            names.append("critic_step")
    else:
        names.append("sft_step")
    if cfg.eval.samples_per_problem > 0:
        names.append("eval_generate")
    return names


KNOBS = {
    "generate": "sampling.batch_size", "eval_generate": "sampling.batch_size", "score": "sampling.batch_size",
    "critic_score": "sampling.batch_size", "trajectory": "sampling.batch_size", "mc_chunk": "vineppo.chunk_rows",
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


def _generate(parts: _Parts, name: str, prompts: int, samples: int, max_new: int, context: int, scfg) -> Phase:
    """`generate`'s jitted core as `generate` calls it: prompts bucketed, one prefill per prompt."""
    parts.need_multiple("sampling.batch_size", prompts)
    bb = bucket(prompts, multiple_of=parts.dp)
    pb = bucket(parts.lengths.prompt, minimum=16)
    room = min(pb + max_new, cache_room(min(parts.lengths.prompt + max_new, context + 1)))
    rows = bb * samples
    i32 = jnp.int32
    args = (parts.state["params"], parts.replicated((bb, pb), i32), parts.replicated((bb,), i32),
            parts.replicated((rows,), i32), parts.keys(rows), parts.stop_table())
    kwargs = dict(cfg=parts.run.model_cfg, scfg=scfg, num_samples=samples, room=room)
    return Phase(name, "sampling.batch_size", prompts, generate_program, args, kwargs, parts.resident("params"),
                 f"{bb} prompts x {samples} samples, prompt {pb}, cache {room} slots, {max_new} new tokens")


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


def trajectory_shapes(run: RunContext, lengths: Lengths, batch_size: Optional[int] = None) -> tuple[int, int]:
    """(rows, columns) of one MC trajectory pass: a group of `sampling.batch_size` episodes (the
    values phase goes through an iteration's episodes group by group), as wide as the sampled
    rows (prompt width + max_new_tokens), bucketed."""
    s = run.cfg.sampling
    episodes = s.problems_per_iteration * s.samples_per_problem
    rows = bucket(min(episodes, batch_size or s.batch_size), multiple_of=sharding.data_parallel_size(run.mesh))
    return rows, bucket(lengths.episode_cols, minimum=16)


def _trajectory(parts: _Parts, value: int) -> Phase:
    """The MC trajectory pass of one group of `sampling.batch_size` episodes."""
    parts.need_multiple("sampling.batch_size", value)
    rows, cols = trajectory_shapes(parts.run, parts.lengths, value)
    args = (parts.state["params"], parts.replicated((rows, cols), jnp.int32), parts.replicated((rows,), jnp.int32))
    return Phase("trajectory", "sampling.batch_size", value, trajectory_program, args, dict(cfg=parts.run.model_cfg),
                 parts.resident("params"), f"{rows} episodes x {cols} tokens")


def trajectory_abstract(parts: _Parts) -> TrajectoryCache:
    """The trajectory cache of one group as the MC chunks receive it: cache rows over the data
    axes (the pass constrains them so), hidden states [rows, cols, D] likewise."""
    m, (rows, cols) = parts.run.model_cfg, trajectory_shapes(parts.run, parts.lengths)
    kv_shape = (m.num_layers, rows, cols, m.num_kv_heads, m.head_dim)
    spec = lambda axes, shape: NamedSharding(parts.mesh, sharding.logical_to_spec(axes, shape, parts.mesh))
    kv = jax.ShapeDtypeStruct(kv_shape, m.compute_dtype, sharding=spec(llama.CACHE_AXES, kv_shape))
    lengths = jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=spec(("batch",), (rows,)))
    hidden_shape = (rows, cols, m.hidden_size)
    hidden = jax.ShapeDtypeStruct(hidden_shape, m.compute_dtype,
                                  sharding=spec(("batch", "length", "embed"), hidden_shape))
    return TrajectoryCache(llama.KVCache(kv, kv, lengths), hidden)


def _mc_chunk(parts: _Parts, value: int) -> Phase:
    """One chunk of MC continuations (`continue_from_prefixes`): `bucket(chunk_rows)` rows, each
    continuing a prefix of the trajectory cache with the largest budget the context allows."""
    run, s = parts.run, parts.run.cfg.sampling
    r = bucket(value, multiple_of=parts.dp)
    longest = parts.lengths.prompt + 2 * s.max_new_tokens  # a state late in a full-length episode, + its budget
    room = cache_room(min(longest, run.context_size + 1))
    i32 = jnp.int32
    scfg = parts.sampling_config(s.max_new_tokens, s.temperature, s.top_p, s.top_k)
    args = (parts.state["params"], trajectory_abstract(parts), parts.replicated((r,), i32),
            parts.replicated((r,), i32), parts.replicated((r,), i32), parts.keys(r), parts.stop_table())
    return Phase("mc_chunk", "vineppo.chunk_rows", value, chunk_program, args,
                 dict(cfg=run.model_cfg, scfg=scfg, room=room), parts.resident("params"),
                 f"{r} rows, cache {room} slots, {s.max_new_tokens} new tokens; trajectory cache as argument")


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


def _policy_step(parts: _Parts, value: int) -> Phase:
    run = parts.run
    batch, m = _rollout_batch(parts, "ppo.micro_batch", value)
    kwargs = dict(model_cfg=run.model_cfg, loss_cfg=run.loss_cfg, optimizer=run.optimizer,
                  temperature=run.cfg.sampling.temperature)
    args = (parts.state["params"], parts.state["opt_state"], batch)
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
    args = (parts.state["params"], parts.state["opt_state"], parts.micro((m, value, t), jnp.int32),
            parts.micro((m, value, t), jnp.bool_))
    kwargs = dict(model_cfg=run.model_cfg, optimizer=update.make_optimizer(run.cfg.optim, 1000))
    return Phase("sft_step", "sft.micro_batch", value, update.sft_step, args, kwargs,
                 parts.resident("params", "opt_state"), f"{m} micro-batches x {value} x {t} tokens")


_BUILDERS: dict[str, Callable[[_Parts, Optional[int]], Phase]] = {
    "generate": _rl_generate, "eval_generate": _eval_generate, "score": _score, "critic_score": _critic_score,
    "trajectory": _trajectory, "mc_chunk": _mc_chunk, "policy_step": _policy_step, "critic_step": _critic_step,
    "sft_step": _sft_step,
}
