"""End-to-end numerics: MC rewards -> advantages -> whitening -> loss; one compilation per shape."""
import functools

import helpers_jax
import jax
import jax.numpy as jnp
import numpy as np
from rl_testing import microbatches, pad_batch, random_rollouts

import vinejax.rl as rl


def ref_token_adv(d, cap):
    B, T = d["response_mask"].shape
    out = np.zeros((B, T))
    for b in range(B):
        L = d["num_steps"][b]
        v = []
        for i in range(L):
            xs = d["mc_rewards"][b, i][d["mc_mask"][b, i]]
            v.append(d["rewards"][b] if (cap is not None and i > cap) else xs.mean())
        v.append(d["rewards"][b])
        for t in np.flatnonzero(d["response_mask"][b]):
            i = np.searchsorted(d["step_starts"][b, :L], t, side="right") - 1
            out[b, t] = v[i + 1] - v[i]
    return out


def test_vine_pipeline_matches_reference_and_compiles_once():
    traces = []

    @functools.partial(jax.jit, static_argnames="cap")
    def f(mc_rewards, mc_mask, rewards, step_starts, num_steps, response_mask, cap):
        traces.append(1)
        est = rl.mc_values(mc_rewards, mc_mask)
        step_adv = rl.vine_step_advantages(est.value, rewards, num_steps, cap)
        tokens = rl.steps_to_tokens(step_adv, step_starts, num_steps, response_mask)
        states = rl.estimated_state_mask(num_steps, mc_rewards.shape[1], cap)
        return tokens, rl.mc_value_metrics(est, states)

    for seed in range(3):
        d = random_rollouts(seed, B=8, T=24, S=6, K=5)
        args = [d[k] for k in ("mc_rewards", "mc_mask", "rewards", "step_starts", "num_steps",
                               "response_mask")]
        tok, m = f(*args, cap=2)
        np.testing.assert_allclose(tok, ref_token_adv(d, 2), atol=1e-6)
        assert float(m["mc/num_states"]) == np.minimum(d["num_steps"], 3).sum()
    assert len(traces) == 1


def test_advantage_functions_compile_once():
    fns = {
        "gae": jax.jit(lambda v, r, m: rl.gae_advantages(v, rl.last_token_rewards(r, m), m)),
        "grpo": jax.jit(lambda v, r, m: rl.grpo_advantages(r, group_size=4)),
        "rloo": jax.jit(lambda v, r, m: rl.rloo_advantages(r, group_size=4)),
        "whiten": jax.jit(lambda v, r, m: rl.masked_whiten(v, m)),
    }
    with helpers_jax.count_compiles() as compiles:
        for seed in range(3):
            d = random_rollouts(seed, B=8, T=16)
            for fn in fns.values():
                jax.block_until_ready(fn(d["token_values"], d["rewards"], d["response_mask"]))
    assert compiles["jit(<lambda>)"] == len(fns)  # one compile each, none per seed


def test_train_step_from_logits_padding_invariant():
    """logits -> token log-probs -> VinePPO loss and its gradient; extra padding changes nothing."""
    d = random_rollouts(7, B=6, T=12, V=11)
    step_adv = rl.vine_step_advantages(rl.mc_values(d["mc_rewards"], d["mc_mask"]).value, d["rewards"],
                                       d["num_steps"])
    tok = rl.steps_to_tokens(step_adv, d["step_starts"], d["num_steps"], d["response_mask"])
    batch = rl.RolloutBatch(tokens=jnp.asarray(d["tokens"]),
                            response_mask=jnp.asarray(d["response_mask"]),
                            old_logprobs=jnp.asarray(d["old_logprobs"]),
                            ref_logprobs=jnp.asarray(d["ref_logprobs"]), advantages=tok,
                            rewards=jnp.asarray(d["rewards"]))
    batch = rl.whiten_batch(batch)

    @jax.jit
    def step(logits, batch):
        def loss_fn(x):
            lp, ent = rl.token_logprobs_and_entropy(x, batch.tokens, 0.6)
            return rl.policy_loss(lp, batch, entropy=ent)
        (loss, m), g = jax.value_and_grad(loss_fn, has_aux=True)(logits)
        return loss, rl.reduce_metrics(m), g

    logits = jnp.asarray(d["logits"])
    loss, m, g = step(logits, batch)
    big = pad_batch(batch, 8, 15)
    big_logits = jnp.pad(logits, ((0, 2), (0, 3), (0, 0)), constant_values=3.0)
    loss2, m2, g2 = step(big_logits, big)
    np.testing.assert_allclose(loss2, loss, rtol=1e-5)
    for k in m:
        np.testing.assert_allclose(m2[k], m[k], rtol=1e-5, atol=1e-7, err_msg=k)
    np.testing.assert_allclose(g2[:6, :12], g, rtol=1e-5, atol=1e-7)
    assert np.all(np.asarray(g2)[6:] == 0) and np.all(np.asarray(g2)[:, 12:] == 0)
    assert np.isfinite(float(loss)) and 0 <= float(m["pg_clipfrac"]) <= 1


def test_ppo_baseline_targets_and_value_loss():
    d = random_rollouts(8, B=6, T=14)
    m = d["response_mask"]
    pen = rl.kl_reward_penalty(d["logprobs"], d["ref_logprobs"], m, beta=0.1)
    adv, ret = jax.jit(rl.ppo_gae_targets)(d["token_values"], d["rewards"], m, kl_penalties=pen)
    pen = np.asarray(pen)
    for b in range(6):          # γ = λ = 1: return_t = R − Σ_{t' ≥ t} penalty_t'
        idx = np.flatnonzero(m[b])
        for t in idx:
            tail = pen[b, idx[idx >= t]].sum()
            np.testing.assert_allclose(ret[b, t], d["rewards"][b] - tail, atol=1e-5)
            np.testing.assert_allclose(adv[b, t], ret[b, t] - d["token_values"][b, t], atol=1e-5)
    # value loss on padded batch equals the unpadded one
    v = jnp.where(m, jnp.asarray(d["token_values"]) + 0.3, 0.0)
    s, c, _ = rl.clipped_value_loss(v, d["token_values"], ret, m)
    padw = ((0, 2), (0, 5))
    s2, c2, _ = rl.clipped_value_loss(jnp.pad(v, padw, constant_values=9.0),
                                      jnp.pad(jnp.asarray(d["token_values"]), padw),
                                      jnp.pad(ret, padw, constant_values=-9.0), jnp.pad(m, padw))
    np.testing.assert_allclose([s2, c2], [s, c], rtol=1e-6)


def test_pad_batch_and_microbatches_shapes():
    d = random_rollouts(9, B=4, T=10, S=5)
    b = rl.RolloutBatch(tokens=d["tokens"], response_mask=d["response_mask"],
                        old_logprobs=d["old_logprobs"], ref_logprobs=d["ref_logprobs"],
                        advantages=d["token_values"], rewards=d["rewards"],
                        step_starts=d["step_starts"], num_steps=d["num_steps"])
    p = pad_batch(b, 6, 12, steps=7)
    assert p.tokens.shape == (6, 12) and p.step_starts.shape == (6, 7)
    assert p.num_steps.shape == (6,) and int(p.num_steps[4:].sum()) == 0
    assert int(p.num_tokens()) == int(b.num_tokens()) and p.returns is None
    mb = microbatches(p, 3)
    assert mb.tokens.shape == (3, 2, 12) and mb.rewards.shape == (3, 2)


def test_sharded_batch_gives_same_loss():
    """Rows sharded over the 8 fake CPU devices: masked global reductions are unchanged."""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    d = random_rollouts(10, B=8, T=12)
    batch = rl.RolloutBatch(tokens=jnp.asarray(d["tokens"]),
                            response_mask=jnp.asarray(d["response_mask"]),
                            old_logprobs=jnp.asarray(d["old_logprobs"]),
                            ref_logprobs=jnp.asarray(d["ref_logprobs"]),
                            advantages=jnp.asarray(d["token_values"]),
                            rewards=jnp.asarray(d["rewards"]))
    lp = jnp.asarray(d["logprobs"])

    def f(lp, batch):
        batch = rl.whiten_batch(batch)
        loss, m = rl.policy_loss(lp, batch)
        return loss, rl.reduce_metrics(m)

    ref_loss, ref_m = jax.jit(f)(lp, batch)
    n = min(8, len(jax.devices()))
    mesh = Mesh(np.array(jax.devices()[:n]), ("data",))
    shard = NamedSharding(mesh, P("data"))
    loss, m = jax.jit(f)(jax.device_put(lp, shard), jax.device_put(batch, shard))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for k in m:
        np.testing.assert_allclose(m[k], ref_m[k], rtol=1e-5, atol=1e-7, err_msg=k)
