"""One RL iteration, top to bottom: sample → grade → steps → values → advantages → batch → update.

Every algorithm shares every line; where the advantages come from (MC continuations from each
step boundary, a critic, the group of samples of one problem, or a user's estimator) is the
run's estimator (`train.estimators`): one call, plus, for an estimator that starts early (MC),
its work on each group of episodes between the sampling calls.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from vinejax import multihost
from vinejax.model import llama
from vinejax.rl.batch import RolloutBatch
from vinejax.rl.losses import adaptive_kl_coef
from vinejax.train import encode, host_work, update
from vinejax.train.batching import to_microbatches
from vinejax.train.context import RunContext
from vinejax.train.episodes import EpisodeStream
from vinejax.train.estimators import Rollouts
from vinejax.train.metrics import Timer, describe, progress
from vinejax.train.samples import sample_records
from vinejax.train.scoring import logprob_scorer, score_rows
from vinejax.train.states import StateRule, episode_states
from vinejax.train.values import StepStates


@flax.struct.dataclass
class TrainState:
    """What an RL iteration changes and a checkpoint holds."""

    params: Any  # what the policy trains: its params, or with `model.lora` its adapters (the base is not saved)
    opt_state: Any  # their optimizer state
    critic: Any = None  # PPO: critic params (the policy's shape + value head); else None
    critic_opt: Any = None
    kl_coef: Any = None  # f32 scalar: β (moves with ppo.adaptive_kl; checkpointed)
    nonfinite_steps: tuple = flax.struct.field(pytree_node=False, default=())  # the last update's skipped steps (not saved)


def init_state(run: RunContext, params) -> TrainState:
    """The state of iteration 0 from the starting policy `params`: what the policy trains
    (`RunContext.initial_trained`: the params, or fresh LoRA adapters), its optimizer state and
    (PPO) a critic initialised from the policy with a fresh value head (the paper's critic)."""
    trained = run.initial_trained(params)
    state = TrainState(trained, update.init_opt_state(run.optimizer, trained, run.trained_shardings),
                       kl_coef=jnp.float32(run.cfg.ppo.kl_coef))
    if run.critic_cfg is None:
        return state
    critic = dict(jax.tree.map(jnp.copy, params))
    head = llama.init_value_head(run.critic_cfg, jax.random.key(run.cfg.seed + 17))
    critic["value_head"] = multihost.place(head, run.critic_shardings["value_head"])
    return state.replace(critic=critic,
                         critic_opt=update.init_opt_state(run.critic_optimizer, critic, run.critic_shardings))


def rl_iteration(run: RunContext, state: TrainState, ref_params, problems: list, iteration: int,
                 rng: jax.Array) -> tuple[TrainState, dict, list]:
    """Sample `problems`, estimate advantages (`run.estimator`) and train on the episodes.

    `ref_params` is the frozen KL reference (with LoRA: the base the adapters attach to).
    Returns the new state, the iteration's metrics (rewards, the estimator's statistics, loss
    terms, phase times) and a few readable episodes (`samples.sample_records`). Call it under
    `run.mesh_context()`.
    """
    cfg, s, estimator = run.cfg, run.cfg.sampling, run.estimator
    timer = Timer()
    rng_sample, rng_values = jax.random.split(rng)
    policy = run.policy(state.params, ref_params)  # LoRA: the base with the adapters (nothing copied)
    env = run.rollout(policy)
    with timer("iteration"), host_work.session(cfg.train.overlap_host_work) as host:
        # Sample call by call; each call's episodes are graded and split into steps on the host
        # thread while the next device work runs, and the estimator's early work (MC) on a group
        # starts one call later, once its states are found (the last groups after the log-probs).
        early = estimator.start(run, state, env, host, rng_values)
        states_of = functools.partial(episode_states, run.tokenizer, run.task.split_steps, rule=StateRule.of(cfg)) \
            if estimator.needs_steps else None  # where the MC states are (`vineppo.states`)
        stream = EpisodeStream(env, problems, s.samples_per_problem, rng_sample, host, env.group_rows, states_of)
        calls, behind = stream.calls(), []
        while (done := timed(timer, "sample", next, calls, None)) is not None:
            hand_over(early, behind, timer, estimator.phase)
            behind = done
        ep = stream.episodes()
        width = encode.length_bucket(int(ep.total_lens.max()))  # trim the unused tail of the decode budget
        tokens = encode.pad_rows(ep.tokens, width, encode.pad_token_id(run.tokenizer))  # [B, T]
        mask = encode.pad_rows(ep.response_mask, width, False, bool)  # [B, T]
        with timer("logprobs"):
            score = lambda p, t: logprob_scorer(p, t, model_cfg=run.model_cfg, temperature=s.temperature)
            old_lp = score_rows(run.mesh, score, policy, tokens, s.batch_size)  # [B, T]
            ref_lp = score_rows(run.mesh, score, ref_params, tokens, s.batch_size)  # [B, T]
        hand_over(early, behind + stream.rest(), timer, estimator.phase)
        rewards, grade_errors = stream.rewards()  # f32[B]
        metrics = {"rewards/mean": rewards.mean(), "rewards/grade_errors": float(grade_errors),
                   "generation/finished_frac": ep.finished.mean()}
        metrics |= describe("generation/length", ep.total_lens - ep.prompt_lens)
        steps = None
        if estimator.needs_steps:
            steps = StepStates.of(*stream.steps())  # [B, S], [B]
            dropped = steps.num_steps == 0  # responses the splitter rejects: no values, no loss (official)
            mask &= ~dropped[:, None]
            metrics["episodes/parse_failed"] = float(dropped.mean())
            metrics |= describe("steps/count", steps.num_steps)

        rollouts = Rollouts(env, ep, rewards, tokens, mask, old_lp, ref_lp, s.samples_per_problem, steps, host, early)
        with timer(estimator.phase):
            est = estimator.estimate(run, state, rollouts, rng_values)
        token_adv = np.asarray(est.advantages, np.float32)  # [B, T], unwhitened
        metrics |= {k: float(v) for k, v in jax.device_get(est.metrics).items()}
        metrics |= describe("advantages", token_adv, mask)
        batch = RolloutBatch(
            tokens=tokens, response_mask=mask, old_logprobs=old_lp, ref_logprobs=ref_lp, advantages=token_adv,
            rewards=rewards, returns=est.returns, old_values=est.old_values)
        with timer("train"):
            state, train_metrics = train_epochs(run, state, batch, iteration, ref_params)
        sequence_kl = float(np.where(mask, old_lp - ref_lp, 0.0).sum(1)[mask.any(1)].mean()) if mask.any() else 0.0
        metrics |= {"kl_coef": float(state.kl_coef), "rollout/kl_k1": sequence_kl}
        if cfg.ppo.adaptive_kl:
            # official horizon: every episode of training, once per epoch (total steps x global batch)
            horizon = cfg.ppo.kl_horizon or cfg.train.iterations * len(rewards) * cfg.ppo.epochs
            state = state.replace(kl_coef=adaptive_kl_coef(state.kl_coef, sequence_kl, cfg.ppo.kl_target, horizon,
                                                           len(rewards)))
    samples = sample_records(run.tokenizer, run.task, ep, rewards, cfg.train.samples_per_iteration, steps=steps,
                             state_values=est.state_values, token_advantages=token_adv)
    # time/host_wait: the main thread in (or waiting for) grading and step splitting, the devices idle
    return state, metrics | train_metrics | timer.as_metrics() | {"time/host_wait": host.idle_seconds}, samples


def timed(timer: Timer, phase: str, fn, *args):
    """fn(*args), its time counted in `timer`'s `phase`."""
    with timer(phase):
        return fn(*args)


def hand_over(early, groups: list, timer: Timer, phase: str) -> None:
    """Give the estimator's early work (`Estimator.start`) each group (waiting for its steps)."""
    if early is not None and groups:
        with timer(phase):
            for group in groups:
                early.add(group())


def train_epochs(run: RunContext, state: TrainState, batch: RolloutBatch, iteration: int,
                 ref_params=None) -> tuple[TrainState, dict]:
    """`ppo.epochs` passes over the episodes in optimizer batches of `ppo.episodes_per_step`, each
    one jitted policy step (and critic step); with LoRA the adapters train on the frozen base
    `ref_params`. Returns the new state (`nonfinite_steps`: which steps a non-finite loss or
    gradient skipped) and the mean step metrics."""
    cfg = run.cfg
    n, per_step = batch.tokens.shape[0], cfg.ppo.episodes_per_step
    multihost.assert_same_on_all_processes(f"the episodes of iteration {iteration}", batch)
    step_metrics = []  # fetched once at the end, so steps dispatch without waiting on the host
    bar = progress(total=cfg.ppo.epochs * -(-n // per_step), desc=f"update it {iteration}")
    for epoch in range(cfg.ppo.epochs):
        order = np.random.default_rng([cfg.seed, iteration, epoch, 7]).permutation(n)
        for start in range(0, n, per_step):
            rows = order[start : start + per_step]
            micro = to_microbatches(run.mesh, jax.tree.map(lambda x: np.asarray(x)[rows], batch), cfg.ppo.micro_batch)
            beta = jnp.zeros((), jnp.float32) if cfg.ppo.kl_in_reward else state.kl_coef  # KL in the loss or not
            inputs = update.StepInputs(beta, ref_params if run.lora else None,
                                       run.dropout_key(iteration, epoch, start))
            params, opt_state, m = update.policy_step(
                state.params, state.opt_state, micro, inputs, model_cfg=run.model_cfg, loss_cfg=run.loss_cfg,
                optimizer=run.optimizer, temperature=cfg.sampling.temperature)
            state = state.replace(params=params, opt_state=opt_state)
            if state.critic is not None:
                critic, critic_opt, m_critic = update.critic_step(
                    state.critic, state.critic_opt, micro, model_cfg=run.critic_cfg,
                    optimizer=run.critic_optimizer, clip_range=cfg.ppo.value_clip, token_mean=cfg.ppo.token_mean)
                state = state.replace(critic=critic, critic_opt=critic_opt)
                m = m | m_critic
            step_metrics.append(m)
            bar.update(1)
    bar.close()
    step_metrics = jax.device_get(step_metrics)
    # a skipped step changed nothing; the stage runner stops the run after too many in a row
    state = state.replace(nonfinite_steps=tuple(bool(m["nonfinite"] or m.get("vf_nonfinite", 0)) for m in step_metrics))
    return state, {k: float(np.mean([m[k] for m in step_metrics])) for k in step_metrics[0]}
