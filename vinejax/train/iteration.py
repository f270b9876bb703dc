"""One RL iteration, top to bottom: sample → grade → steps → values → advantages → batch → update.

VinePPO, PPO, GRPO and RLOO share every line except where their values come from (MC
continuations from each step boundary, the critic, or nothing: the group of samples of one
problem) and how `rl.advantages.compute` turns those into token advantages.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from vinejax import multihost
from vinejax.config import adaptive_config
from vinejax.model import llama
from vinejax.rl import advantages
from vinejax.rl.batch import RolloutBatch
from vinejax.rl.losses import adaptive_kl_coef, kl_reward_penalty
from vinejax.train import encode, host_work, update
from vinejax.train.batching import to_microbatches
from vinejax.train.context import RunContext
from vinejax.train.episodes import episode_steps, grade_episodes, sample_episodes, sampling_config
from vinejax.train.metrics import Timer, describe, progress
from vinejax.train.samples import sample_records
from vinejax.train.scoring import logprob_scorer, score_rows
from vinejax.train.values import adaptive_rollouts, critic_token_values, mc_state_values


@flax.struct.dataclass
class TrainState:
    """What an RL iteration changes and a checkpoint holds."""

    params: Any  # policy params
    opt_state: Any  # policy optimizer state
    critic: Any = None  # PPO: critic params (the policy's shape + value head); else None
    critic_opt: Any = None
    kl_coef: Any = None  # f32 scalar: β (moves with ppo.adaptive_kl; checkpointed)
    nonfinite_steps: tuple = flax.struct.field(pytree_node=False, default=())  # the last update's skipped steps (not saved)


def init_state(run: RunContext, params) -> TrainState:
    """The state of iteration 0: the policy, its optimizer state and (PPO) a critic initialised
    from the policy with a fresh value head (the paper's critic)."""
    state = TrainState(params, update.init_opt_state(run.optimizer, params, run.param_shardings),
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
    """Sample `problems`, estimate values and advantages, and train on the episodes.

    Returns the new state, the iteration's metrics (rewards, MC / critic statistics, loss terms,
    phase times) and a few readable episodes (`samples.sample_records`). Call it under
    `run.mesh_context()`.
    """
    cfg, s = run.cfg, run.cfg.sampling
    timer = Timer()
    rng_sample, rng_mc = jax.random.split(rng)
    scfg = sampling_config(run.tokenizer, s.temperature, s.top_p, s.max_new_tokens, top_k=s.top_k)
    with timer("iteration"), host_work.session(cfg.train.overlap_host_work) as host:
        with timer("sample"):
            ep = sample_episodes(state.params, run.model_cfg, run.tokenizer, run.task, problems, scfg,
                                 s.samples_per_problem, rng_sample, s.batch_size, run.context_size, run.stops)
        # grading and step splitting on the host thread while the devices score log-probs
        rewards_of = host.track(grade_episodes(run.task, ep, cfg.task.grade_workers, pool=host.pool))
        if cfg.algo == "vineppo":
            steps_of = host.start(episode_steps, run.tokenizer, run.task.split_steps, ep)
        width = encode.length_bucket(int(ep.total_lens.max()))  # trim the unused tail of the decode budget
        tokens = encode.pad_rows(ep.tokens, width, encode.pad_token_id(run.tokenizer))  # [B, T]
        mask = encode.pad_rows(ep.response_mask, width, False, bool)  # [B, T]
        with timer("logprobs"):
            score = lambda p, t: logprob_scorer(p, t, model_cfg=run.model_cfg, temperature=s.temperature)
            old_lp = score_rows(run.mesh, score, state.params, tokens, s.batch_size)  # [B, T]
            ref_lp = score_rows(run.mesh, score, ref_params, tokens, s.batch_size)  # [B, T]
        rewards = host.wait(rewards_of)  # f32[B]
        metrics = {"rewards/mean": rewards.mean(), "generation/finished_frac": ep.finished.mean()}
        metrics |= describe("generation/length", ep.total_lens - ep.prompt_lens)

        values: dict = {}  # the inputs each algorithm's advantages need
        if cfg.algo == "vineppo":
            step_starts, num_steps = host.wait(steps_of)  # [B, S], [B]
            dropped = num_steps == 0  # responses the splitter rejects: no MC, no loss (official)
            mask &= ~dropped[:, None]
            metrics["episodes/parse_failed"] = float(dropped.mean())
            acfg = adaptive_config(cfg)
            with timer("mc"):
                if acfg is None:  # the paper: K = vineppo.num_rollouts from every state
                    state_values, mc_metrics = mc_state_values(
                        state.params, run.model_cfg, run.tokenizer, run.task, ep, step_starts, num_steps, rng_mc,
                        scfg, cfg.vineppo.num_rollouts, cfg.vineppo.max_estimated_states, cfg.vineppo.chunk_rows,
                        cfg.task.grade_workers, run.context_size, run.stops, trajectory_rows=s.batch_size, host=host)
                else:
                    res, mc_metrics = adaptive_rollouts(
                        state.params, run.model_cfg, run.tokenizer, run.task, ep, step_starts, num_steps, rewards,
                        rng_mc, scfg, acfg, cfg.vineppo.max_estimated_states, cfg.vineppo.chunk_rows,
                        cfg.task.grade_workers, run.context_size, run.stops, cfg.vineppo.adaptive.budget_per_state,
                        trajectory_rows=s.batch_size)
                    state_values = res.values
            cap = cfg.vineppo.max_estimated_states
            values = dict(state_values=state_values, step_starts=step_starts, num_steps=num_steps,
                          max_value_step=None if cap < 0 else cap)
            metrics |= mc_metrics | describe("steps/count", num_steps)
        elif cfg.algo == "ppo":
            with timer("values"):
                token_values = critic_token_values(run.mesh, state.critic, run.critic_cfg, tokens, s.batch_size)
            values = dict(token_values=token_values, gamma=cfg.ppo.gae_gamma, lam=cfg.ppo.gae_lambda)
            if cfg.ppo.kl_in_reward:  # −β·kl_t in the token rewards (the official KL-in-reward option)
                values["kl_penalties"] = kl_reward_penalty(jnp.asarray(old_lp), jnp.asarray(ref_lp), jnp.asarray(mask),
                                                           state.kl_coef)

        adv = advantages.compute(cfg.algo, jnp.asarray(rewards), jnp.asarray(mask), group_size=s.samples_per_problem,
                                 **values)
        token_adv = np.asarray(adv.tokens, np.float32)  # [B, T], unwhitened
        metrics |= {k: float(v) for k, v in jax.device_get(adv.metrics).items()}
        metrics |= describe("advantages", token_adv, mask)
        batch = RolloutBatch(
            tokens=tokens, response_mask=mask, old_logprobs=old_lp, ref_logprobs=ref_lp, advantages=token_adv,
            rewards=rewards, returns=None if adv.returns is None else np.asarray(adv.returns),
            old_values=values.get("token_values"))
        with timer("train"):
            state, train_metrics = train_epochs(run, state, batch, iteration)
        sequence_kl = float(np.where(mask, old_lp - ref_lp, 0.0).sum(1)[mask.any(1)].mean()) if mask.any() else 0.0
        metrics |= {"kl_coef": float(state.kl_coef), "rollout/kl_k1": sequence_kl}
        if cfg.ppo.adaptive_kl:
            # official horizon: every episode of training, once per epoch (total steps x global batch)
            horizon = cfg.ppo.kl_horizon or cfg.train.iterations * len(rewards) * cfg.ppo.epochs
            state = state.replace(kl_coef=adaptive_kl_coef(state.kl_coef, sequence_kl, cfg.ppo.kl_target, horizon,
                                                           len(rewards)))
    samples = sample_records(run.tokenizer, run.task, ep, rewards, cfg.train.samples_per_iteration,
                             step_starts=values.get("step_starts"), num_steps=values.get("num_steps"),
                             state_values=values.get("state_values"), token_advantages=token_adv)
    # time/host_wait: the main thread in (or waiting for) grading and step splitting, the devices idle
    return state, metrics | train_metrics | timer.as_metrics() | {"time/host_wait": host.idle_seconds}, samples


def train_epochs(run: RunContext, state: TrainState, batch: RolloutBatch, iteration: int) -> tuple[TrainState, dict]:
    """`ppo.epochs` passes over the episodes in optimizer batches of `ppo.episodes_per_step`, each
    one jitted policy step (and critic step); returns the new state (`nonfinite_steps`: which steps
    a non-finite loss or gradient skipped) and the mean step metrics."""
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
            params, opt_state, m = update.policy_step(
                state.params, state.opt_state, micro, beta, model_cfg=run.model_cfg, loss_cfg=run.loss_cfg,
                optimizer=run.optimizer, temperature=cfg.sampling.temperature, whiten=cfg.ppo.whiten_advantages,
                token_mean=cfg.ppo.token_mean)
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
