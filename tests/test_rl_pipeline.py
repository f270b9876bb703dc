"""End-to-end numerics: MC rewards -> advantages -> whitening -> loss; one compilation per shape."""
import functools

import jax
import jax.numpy as jnp
import numpy as np

import vinejax.rl as rl
from vinejax.rl.testing import random_rollouts


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
        return rl.vine_advantages_from_mc(mc_rewards, mc_mask, rewards, step_starts, num_steps,
                                          response_mask, cap)

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
    for seed in range(3):
        d = random_rollouts(seed, B=8, T=16)
        for fn in fns.values():
            jax.block_until_ready(fn(d["token_values"], d["rewards"], d["response_mask"]))
    assert all(fn._cache_size() == 1 for fn in fns.values())


def test_train_step_from_logits_padding_invariant():
    """logits -> token log-probs -> VinePPO loss and its gradient; extra padding changes nothing."""
    d = random_rollouts(7, B=6, T=12, V=11)
    tok, _ = rl.vine_advantages_from_mc(d["mc_rewards"], d["mc_mask"], d["rewards"],
                                        d["step_starts"], d["num_steps"], d["response_mask"])
    batch = rl.RolloutBatch(tokens=jnp.asarray(d["tokens"]),
                            response_mask=jnp.asarray(d["response_mask"]),
                            old_logprobs=jnp.asarray(d["old_logprobs"]),
                            ref_logprobs=jnp.asarray(d["ref_logprobs"]), advantages=tok,
                            rewards=jnp.asarray(d["rewards"]))
    batch = rl.whiten_advantages(batch)

    @jax.jit
    def step(logits, batch):
        def loss_fn(x):
            lp, ent = rl.token_logprobs_and_entropy(x, batch.tokens, 0.6, vocab_chunk=4)
            return rl.vineppo_policy_loss(lp, batch, entropy=ent)
        (loss, m), g = jax.value_and_grad(loss_fn, has_aux=True)(logits)
        return loss, rl.reduce_metrics(m), g

    logits = jnp.asarray(d["logits"])
    loss, m, g = step(logits, batch)
    big = rl.pad_batch(batch, 8, 15)
    big_logits = jnp.pad(logits, ((0, 2), (0, 3), (0, 0)), constant_values=3.0)
    loss2, m2, g2 = step(big_logits, big)
    np.testing.assert_allclose(loss2, loss, rtol=1e-5)
    for k in m:
        np.testing.assert_allclose(m2[k], m[k], rtol=1e-5, atol=1e-7, err_msg=k)
    np.testing.assert_allclose(g2[:6, :12], g, rtol=1e-5, atol=1e-7)
    assert np.all(np.asarray(g2)[6:] == 0) and np.all(np.asarray(g2)[:, 12:] == 0)
    assert np.isfinite(float(loss)) and 0 <= float(m["pg_clipfrac"]) <= 1
