"""Losses vs Python-loop references; gradients; padding invariance; micro-batch exactness."""
import math

import helpers_jax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rl_testing import microbatches, pad_batch, random_rollouts

from vinejax.rl import losses as L
from vinejax.rl.batch import RolloutBatch


def ref_ppo(lp, old, adv, mask, eps_lo, eps_hi, dual):
    tot, n, clip, akl, rsum = 0.0, 0, 0, 0.0, 0.0
    for b, t in zip(*np.nonzero(mask)):
        r = math.exp(float(lp[b, t]) - float(old[b, t]))
        a = float(adv[b, t])
        l1, l2 = -a * r, -a * min(max(r, 1 - eps_lo), 1 + eps_hi)
        ell = max(l1, l2)
        if dual is not None and a < 0:
            ell = min(ell, -dual * a)
        tot += ell
        n += 1
        clip += l2 > l1
        akl += r - 1 - math.log(r)
        rsum += r
    return tot, n, clip / n, akl / n, rsum / n


def ref_kl_tok(lp, ref, kind, clamp):
    d = ref - lp
    k = {"k1": -d, "k2": 0.5 * d * d, "k3": math.exp(d) - d - 1}[kind]
    return k if clamp is None else min(max(k, clamp[0]), clamp[1])


def make_batch(d, adv=None):
    return RolloutBatch(tokens=jnp.asarray(d["tokens"]), response_mask=jnp.asarray(d["response_mask"]),
                        old_logprobs=jnp.asarray(d["old_logprobs"]),
                        ref_logprobs=jnp.asarray(d["ref_logprobs"]),
                        advantages=jnp.asarray(d["token_values"] - 0.5 if adv is None else adv),
                        rewards=jnp.asarray(d["rewards"]), step_starts=jnp.asarray(d["step_starts"]),
                        num_steps=jnp.asarray(d["num_steps"]))


@pytest.mark.parametrize("eps_hi,dual", [(None, None), (0.28, None), (None, 3.0)])
def test_ppo_clip_matches_reference(eps_hi, dual):
    d = random_rollouts(0, B=10, T=20)
    adv = np.where(d["response_mask"], np.random.default_rng(1).normal(size=(10, 20)), 9.0)
    lp = d["logprobs"].copy()
    lp[d["response_mask"]] += np.random.default_rng(2).normal(0, 1.0, d["response_mask"].sum())
    f = jax.jit(L.ppo_clip_loss, static_argnames=("clip_eps", "clip_eps_high", "dual_clip"))
    s, c, m = f(lp, d["old_logprobs"], adv, d["response_mask"], clip_eps=0.2, clip_eps_high=eps_hi,
                dual_clip=dual)
    tot, n, cf, akl, rat = ref_ppo(lp, d["old_logprobs"], adv, d["response_mask"], 0.2,
                                   0.2 if eps_hi is None else eps_hi, dual)
    mm = L.reduce_metrics(m)
    np.testing.assert_allclose(s, tot, rtol=1e-5)
    assert float(c) == n
    np.testing.assert_allclose(mm["pg_clipfrac"], cf, rtol=1e-6)
    np.testing.assert_allclose(mm["approx_kl"], akl, rtol=1e-4)
    np.testing.assert_allclose(mm["ratio"], rat, rtol=1e-5)
    assert 0 < cf < 1


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
@pytest.mark.parametrize("clamp", [None, (0.0, 10.0), (-0.1, 0.05)])
def test_kl_matches_reference(kind, clamp):
    d = random_rollouts(1, B=8, T=16)
    lp, ref, mask = d["logprobs"], d["ref_logprobs"], d["response_mask"]
    s, c, m = L.kl_loss(lp, ref, mask, kind, clamp)
    per_seq = [sum(ref_kl_tok(float(lp[b, t]), float(ref[b, t]), kind, clamp)
                   for t in range(16) if mask[b, t]) for b in range(8) if mask[b].any()]
    np.testing.assert_allclose(s, sum(per_seq), rtol=1e-4, atol=1e-5)
    assert float(c) == len(per_seq)                                   # empty rows not counted
    pen = np.asarray(L.kl_reward_penalty(lp, ref, mask, 0.05, kind, clamp))
    assert np.all(pen[~mask] == 0)
    np.testing.assert_allclose(pen.sum(), 0.05 * sum(per_seq), rtol=1e-4, atol=1e-6)


def test_value_loss_matches_reference():
    d = random_rollouts(2, B=8, T=16)
    rng = np.random.default_rng(0)
    mask = d["response_mask"]
    v, old, ret = (np.where(mask, rng.normal(size=(8, 16)), 1e3).astype(np.float32) for _ in range(3))
    s, c, m = jax.jit(L.clipped_value_loss)(v, old, ret, mask)
    ref = [0.5 * max((v[b, t] - ret[b, t]) ** 2,
                     (min(max(v[b, t], old[b, t] - 0.2), old[b, t] + 0.2) - ret[b, t]) ** 2)
           for b, t in zip(*np.nonzero(mask))]
    np.testing.assert_allclose(s / c, np.mean(ref), rtol=1e-5)


def _loss_fn(cfg):
    def f(lp, batch, n_tok=None, n_seq=None):
        return L.policy_loss(lp, batch, cfg, num_tokens=n_tok, num_sequences=n_seq)
    return f


def test_grad_matches_finite_difference_and_clipped_tokens_have_no_grad():
    d = random_rollouts(3, B=4, T=8)
    cfg = L.PolicyLossConfig(kl_coef=0.1)
    with jax.enable_x64(True):
        b64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64) if x.dtype == np.float32 else x,
                           make_batch(d))
        lp = jnp.asarray(d["logprobs"], jnp.float64)
        lp = jnp.where(b64.response_mask, b64.old_logprobs + 0.5 * jnp.sin(jnp.arange(8.0)), lp)
        f = jax.jit(lambda x: _loss_fn(cfg)(x, b64)[0])
        g = np.asarray(jax.grad(f)(lp))
        assert np.all(np.isfinite(g))
        assert np.all(g[~d["response_mask"]] == 0)
        h = 1e-6
        lp_np = np.asarray(lp)
        for b, t in list(zip(*np.nonzero(d["response_mask"])))[:12]:
            e = np.zeros_like(lp_np)
            e[b, t] = h
            fd = (f(lp_np + e) - f(lp_np - e)) / (2 * h)
            np.testing.assert_allclose(g[b, t], fd, rtol=1e-5, atol=1e-9)
        # PPO part alone: tokens whose clipped branch is active get exactly zero gradient
        adv, old, mask = b64.advantages, b64.old_logprobs, b64.response_mask
        gp = np.asarray(jax.jit(jax.grad(lambda x: L.ppo_clip_loss(x, old, adv, mask)[0]))(lp))
        r = np.exp(np.asarray(lp - old))
        a = np.asarray(adv)
        clipped = mask & (((a > 0) & (r > 1.2)) | ((a < 0) & (r < 0.8)))
        assert clipped.sum() > 0 and (mask & ~clipped).sum() > 0
        assert np.all(gp[clipped] == 0)
        assert np.all(gp[mask & ~clipped & (a != 0)] != 0)


def test_padding_invariance_and_garbage():
    d = random_rollouts(4, B=6, T=12)
    batch = make_batch(d)
    lp = jnp.asarray(d["logprobs"])
    ent = jnp.asarray(d["token_values"])
    loss, m = jax.jit(L.policy_loss)(lp, batch, entropy=ent)
    big = pad_batch(batch, 9, 20, steps=10)
    big = big.replace(old_logprobs=jnp.where(big.response_mask, big.old_logprobs, jnp.nan),
                      advantages=jnp.where(big.response_mask, big.advantages, 1e30))
    lp_big = jnp.where(big.response_mask, jnp.pad(lp, ((0, 3), (0, 8))), jnp.inf)
    ent_big = jnp.where(big.response_mask, jnp.pad(ent, ((0, 3), (0, 8))), jnp.nan)
    loss2, m2 = jax.jit(L.policy_loss)(lp_big, big, entropy=ent_big)
    np.testing.assert_allclose(loss2, loss, rtol=1e-6)
    for k in m:
        np.testing.assert_allclose(m2[k][0], m[k][0], rtol=1e-6, err_msg=k)
        np.testing.assert_allclose(m2[k][1], m[k][1], err_msg=k)
    g = jax.jit(jax.grad(lambda x: L.policy_loss(x, big, entropy=ent_big)[0]))(lp_big)
    assert np.all(np.isfinite(np.asarray(g)))


def test_microbatch_accumulation_is_exact():
    d = random_rollouts(5, B=8, T=16)
    batch = make_batch(d)
    lp = jnp.asarray(d["logprobs"])
    cfg = L.PolicyLossConfig(kl_coef=0.3)
    f = jax.jit(_loss_fn(cfg))
    gf = jax.jit(jax.grad(lambda *a: f(*a)[0]))
    full, m_full = f(lp, batch)
    g_full = gf(lp, batch)
    n_tok, n_seq = batch.num_tokens(), batch.num_sequences()
    micro = microbatches(batch, 2)
    lps = lp.reshape(2, 4, 16)
    tot, agg, grads = 0.0, None, []
    for i in range(2):
        mb = jax.tree.map(lambda x: x[i], micro)
        li, mi = f(lps[i], mb, n_tok, n_seq)
        grads.append(gf(lps[i], mb, n_tok, n_seq))
        tot += li
        agg = mi if agg is None else L.add_metrics(agg, mi)
    np.testing.assert_allclose(tot, full, rtol=1e-6)
    np.testing.assert_allclose(jnp.concatenate(grads), g_full, rtol=1e-6, atol=1e-9)
    for k, v in L.reduce_metrics(m_full).items():
        np.testing.assert_allclose(L.reduce_metrics(agg)[k], v, rtol=1e-6, err_msg=k)


def test_should_skip():
    m = {"ratio": (jnp.array(33.0), jnp.array(3.0))}
    assert bool(L.should_skip(m))
    assert not bool(L.should_skip({"ratio": (jnp.array(3.0), jnp.array(3.0))}))
    assert not bool(L.should_skip(m, L.PolicyLossConfig(max_mean_ratio=None)))


def test_compiles_once_per_shape():
    traces = []

    def step(lp, batch):
        traces.append(1)                                # Python side effect: runs per trace
        loss, m = L.policy_loss(lp, batch)
        return loss, L.reduce_metrics(m)

    jstep = jax.jit(step)
    with helpers_jax.count_compiles() as compiles:
        for seed in range(3):
            d = random_rollouts(seed, B=6, T=12)
            jax.block_until_ready(jstep(jnp.asarray(d["logprobs"]), make_batch(d)))
    assert len(traces) == 1 and compiles["jit(step)"] == 1


def test_traced_kl_coef_overrides_the_static_one():
    d = random_rollouts(7, B=4, T=12)
    batch, lp = make_batch(d), jnp.asarray(d["logprobs"])
    static, _ = L.policy_loss(lp, batch, L.PolicyLossConfig(kl_coef=0.37))
    traced, _ = jax.jit(lambda b: L.policy_loss(lp, batch, L.PolicyLossConfig(kl_coef=1e-4), kl_coef=b))(
        jnp.float32(0.37))
    np.testing.assert_allclose(traced, static, rtol=1e-6)
    no_kl, _ = L.policy_loss(lp, batch, L.PolicyLossConfig(kl_coef=0.0))
    zero, _ = L.policy_loss(lp, batch, L.PolicyLossConfig(kl_coef=0.37), kl_coef=jnp.float32(0.0))
    np.testing.assert_allclose(zero, no_kl, rtol=1e-6)


@pytest.mark.parametrize("kl", [0.0, 3.0, 5.9, 6.5, 40.0])
def test_adaptive_kl_controller_is_ziegler_formula(kl):
    beta, target, horizon, n = 0.2, 6.0, 10000, 512
    error = min(max(kl / target - 1.0, -0.2), 0.2)  # Ziegler et al. 2019, proportional error clipped to ±0.2
    want = beta * (1 + error * n / horizon)
    np.testing.assert_allclose(float(L.adaptive_kl_coef(jnp.float32(beta), kl, target, horizon, n)), want, rtol=1e-6)
