"""Advantage estimators vs independent Python-loop references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rl_testing import random_rollouts

from vinejax.rl import advantages as A


# ------------------------------------------------------------------ references (plain python)
def ref_vine_tokens(values, R, starts, L, mask, cap=None):
    B, T = mask.shape
    out = np.zeros((B, T))
    step_adv = np.zeros(values.shape)
    for b in range(B):
        def v(j):
            if j >= L[b] or (cap is not None and j > cap):
                return R[b]
            return values[b, j]
        for i in range(L[b]):
            step_adv[b, i] = v(i + 1) - v(i)
        for t in range(T):
            if not mask[b, t]:
                continue
            i = max(i for i in range(L[b]) if starts[b, i] <= t)
            out[b, t] = step_adv[b, i]
    return step_adv, out


def ref_gae(values, rew, mask, gamma, lam):
    B, T = mask.shape
    adv, ret = np.zeros((B, T)), np.zeros((B, T))
    for b in range(B):
        idx = [t for t in range(T) if mask[b, t]]
        a_next, v_next = 0.0, 0.0
        for t in reversed(idx):
            delta = rew[b, t] + gamma * v_next - values[b, t]
            a_next = delta + gamma * lam * a_next
            v_next = values[b, t]
            adv[b, t], ret[b, t] = a_next, a_next + values[b, t]
    return adv, ret


def ref_groups(r, ids, valid):
    g, rl = np.zeros(len(r)), np.zeros(len(r))
    for i in range(len(r)):
        if not valid[i]:
            continue
        mem = [j for j in range(len(r)) if ids[j] == ids[i] and valid[j]]
        xs = r[mem]
        std = np.std(xs, ddof=1) if len(xs) > 1 else 0.0
        g[i] = (r[i] - xs.mean()) / (std + 1e-6)
        others = [r[j] for j in mem if j != i]
        rl[i] = r[i] - np.mean(others) if others else 0.0
    return g, rl


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("seed,cap", [(0, None), (1, None), (2, 0), (3, 2), (4, 100)])
def test_vine_advantages_match_reference(seed, cap):
    d = random_rollouts(seed, B=10, T=30, S=7)
    f = jax.jit(lambda v, r, starts, n, m: A.steps_to_tokens(A.vine_step_advantages(v, r, n, cap), starts, n, m))
    tok = f(d["values"], d["rewards"], d["step_starts"], d["num_steps"], d["response_mask"])
    step_ref, tok_ref = ref_vine_tokens(d["values"], d["rewards"], d["step_starts"],
                                        d["num_steps"], d["response_mask"], cap)
    step = A.vine_step_advantages(d["values"], d["rewards"], d["num_steps"], cap)
    np.testing.assert_allclose(step, step_ref, atol=1e-6)
    np.testing.assert_allclose(tok, tok_ref, atol=1e-6)
    # telescoping: Σ_i A_i = R − V(s_0) for every non-empty trajectory (cap ≥ 0 keeps V(s_0))
    L = d["num_steps"]
    tele = np.asarray(step).sum(1)
    ne = L > 0
    np.testing.assert_allclose(tele[ne], (d["rewards"] - d["values"][:, 0])[ne], atol=1e-5)
    assert np.all(tele[~ne] == 0)
    # prompt and padding are zero
    assert np.all(np.asarray(tok)[~d["response_mask"]] == 0)
    # one-step response (row 0): all its tokens get R − V(s_0)
    np.testing.assert_allclose(np.asarray(tok)[0, d["response_mask"][0]],
                               d["rewards"][0] - d["values"][0, 0], atol=1e-6)


def test_cap_states_get_zero_advantage():
    values = np.full((1, 6), 0.3, np.float32)
    step = np.asarray(A.vine_step_advantages(values, np.array([1.0]), np.array([6]), 2))
    np.testing.assert_allclose(step[0], [0, 0, 0.7, 0, 0, 0], atol=1e-6)


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.9, 0.8)])
def test_gae_matches_reference(gamma, lam):
    d = random_rollouts(5, B=9, T=20)
    rew = np.asarray(A.last_token_rewards(d["rewards"], d["response_mask"]))
    for b in range(9):    # reward sits on the last response token
        idx = np.flatnonzero(d["response_mask"][b])
        assert rew[b].sum() == (d["rewards"][b] if len(idx) else 0)
        if len(idx):
            assert rew[b, idx[-1]] == d["rewards"][b]
    adv, ret = jax.jit(A.gae_advantages, static_argnames=("gamma", "lam"))(
        d["token_values"], rew, d["response_mask"], gamma=gamma, lam=lam)
    adv_r, ret_r = ref_gae(d["token_values"], rew, d["response_mask"], gamma, lam)
    np.testing.assert_allclose(adv, adv_r, atol=1e-5)
    np.testing.assert_allclose(ret, ret_r, atol=1e-5)
    if gamma == 1.0 and lam == 1.0:   # returns = R on every response token
        np.testing.assert_allclose(np.asarray(ret)[d["response_mask"]],
                                   np.broadcast_to(d["rewards"][:, None], ret.shape)[d["response_mask"]],
                                   atol=1e-5)


def test_gae_with_hole_in_mask():
    mask = np.array([[False, True, True, False, True, False]])
    vals = np.array([[9, .2, .5, 9, .4, 9]], np.float32)
    rew = np.array([[0, 0, 0, 0, 1, 0]], np.float32)
    adv, _ = A.gae_advantages(vals, rew, mask, 0.9, 0.7)
    adv_r, _ = ref_gae(vals, rew, mask, 0.9, 0.7)
    np.testing.assert_allclose(adv, adv_r, atol=1e-6)


def test_grpo_rloo_group_size_and_ids():
    rng = np.random.default_rng(0)
    r = rng.integers(0, 2, 12).astype(np.float32)
    r[4:8] = 1.0                                   # a constant group: std 0 → adv 0
    ids = np.repeat(np.arange(3), 4)
    g, rl = ref_groups(r, ids, np.ones(12, bool))
    np.testing.assert_allclose(A.grpo_advantages(r, group_size=4), g, atol=1e-5)
    np.testing.assert_allclose(A.rloo_advantages(r, group_size=4), rl, atol=1e-6)
    # arbitrary ids, ragged groups, a singleton, invalid rows
    ids = np.array([5, 0, 5, 2, 0, 5, 7, 2, 2, 0, 0, 11])
    valid = np.array([1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1], bool)
    g, rl = ref_groups(r, ids, valid)
    gj = jax.jit(A.grpo_advantages)(r, jnp.asarray(ids), valid=valid)
    np.testing.assert_allclose(gj, g, atol=1e-5)
    np.testing.assert_allclose(jax.jit(A.rloo_advantages)(r, jnp.asarray(ids), valid=valid), rl,
                               atol=1e-6)
    mask = np.ones((12, 3), bool)
    mask[0] = False
    tok = np.asarray(A.sequence_to_tokens(gj, mask))
    assert np.all(tok[0] == 0) and np.allclose(tok[1], g[1])


@pytest.mark.parametrize("shift", [True, False])
def test_masked_whiten(shift):
    d = random_rollouts(6)
    x, m = d["token_values"], d["response_mask"]
    out = np.asarray(jax.jit(A.masked_whiten, static_argnames="shift_mean")(x, m, shift_mean=shift))
    xs = x[m].astype(np.float64)
    ref = (xs - xs.mean()) / np.sqrt(xs.var(ddof=1) + 1e-8) + (0 if shift else xs.mean())
    np.testing.assert_allclose(out[m], ref, rtol=1e-4, atol=1e-5)
    assert np.all(out[~m] == 0)
    # all-masked input stays finite and zero
    z = np.asarray(A.masked_whiten(x, np.zeros_like(m)))
    assert np.all(z == 0)
