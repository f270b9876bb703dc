"""MC value estimates vs a Python-loop reference."""
import jax
import numpy as np
import pytest
from rl_testing import random_rollouts

from vinejax.rl import values as V


def ref_mc(rew, mask):
    B, S, K = rew.shape
    val, se, cnt = np.zeros((B, S)), np.zeros((B, S)), np.zeros((B, S), int)
    for b in range(B):
        for i in range(S):
            xs = [rew[b, i, k] for k in range(K) if mask[b, i, k]]
            cnt[b, i] = len(xs)
            if xs:
                val[b, i] = np.mean(xs)
            if len(xs) >= 2:
                se[b, i] = np.std(xs, ddof=1) / np.sqrt(len(xs))
    return val, se, cnt


@pytest.mark.parametrize("seed,K", [(0, 4), (1, 1), (2, 9)])
def test_mc_values_match_reference(seed, K):
    d = random_rollouts(seed, K=K)
    est = jax.jit(V.mc_values)(d["mc_rewards"], d["mc_mask"])
    val, se, cnt = ref_mc(d["mc_rewards"], d["mc_mask"])
    np.testing.assert_allclose(est.value, val, atol=1e-6)
    np.testing.assert_allclose(est.stderr, se, atol=1e-6)
    np.testing.assert_array_equal(est.count, cnt)
    if K == 1:
        assert np.all(np.asarray(est.stderr) == 0)


def test_state_masks_and_cap():
    ns = np.array([0, 1, 5, 30])
    m = np.asarray(V.state_mask(ns, 32))
    assert m.sum(1).tolist() == [0, 1, 5, 30]
    c = np.asarray(V.estimated_state_mask(ns, 32, max_value_step=3))
    assert c.sum(1).tolist() == [0, 1, 4, 4]          # states 0..3 (prompt + 3 prefixes)


def test_metrics():
    d = random_rollouts(3)
    est = V.mc_values(d["mc_rewards"], d["mc_mask"])
    states = V.state_mask(d["num_steps"], d["mc_mask"].shape[1])
    m = jax.jit(V.mc_value_metrics)(est, states)
    st = np.asarray(states)
    assert float(m["mc/num_states"]) == st.sum()
    assert float(m["mc/rollouts"]) == d["mc_mask"].sum()
    np.testing.assert_allclose(m["mc/value_std"], np.asarray(est.value)[st].std(), atol=1e-6)
