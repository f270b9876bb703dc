"""Adaptive-K rollouts: exact unbiasedness by enumerating every Bernoulli sequence, budgets,
determinism and edge cases."""
import itertools

import numpy as np
import pytest

from vinejax.rl import adaptive as A

RULES = [
    A.Rule(round_size=3, min_rollouts=3, max_rollouts=9, stop_stderr=0.0),
    A.Rule(round_size=2, min_rollouts=2, max_rollouts=12, stop_stderr=0.15),
    A.Rule(round_size=1, min_rollouts=3, max_rollouts=7, stop_stderr=0.2),
    A.Rule(round_size=4, min_rollouts=4, max_rollouts=12, stop_stderr=0.1),
    A.Rule(round_size=2, min_rollouts=4, max_rollouts=10, stop_stderr=0.0),
]
PS = [0.0, 0.03, 0.1, 0.37, 0.5, 0.9, 1.0]


def all_sequences(n):
    """{0,1}[2^n, n]: every Bernoulli sequence of length n."""
    return np.array(list(itertools.product([0, 1], repeat=n)), np.int64)


def seq_probs(x, p):
    """f64[M]: probability of each full sequence under Bernoulli(p) (0^0 = 1)."""
    ones = x.sum(1)
    return p ** ones * (1 - p) ** (x.shape[1] - ones)


@pytest.mark.parametrize("cfg", RULES)
def test_unbiased_by_enumeration(cfg):
    """E V̂ = p exactly: every sequence of max_rollouts outcomes through the round loop."""
    x = all_sequences(cfg.max_rollouts)
    res = A.run_rounds(x, cfg)
    assert np.all(res.n <= cfg.max_rollouts) and np.all(res.n >= cfg.round_size)
    for p in PS:
        w = seq_probs(x, p)
        assert abs((w * res.value.astype(np.float64)).sum() - p) < 1e-6  # f32 values
        exact = (w * A.estimate_table(cfg)[res.n, res.s]).sum()
        assert abs(exact - p) < 1e-9


@pytest.mark.parametrize("cfg", RULES)
def test_table_is_conditional_mean_of_first_rollout(cfg):
    """f(n, s) equals the brute-force mean of x_1 over the sequences that end at (n, s)."""
    x = all_sequences(cfg.max_rollouts)
    res = A.run_rounds(x, cfg)
    table = A.estimate_table(cfg)
    for n, s in set(zip(res.n.tolist(), res.s.tolist())):
        at = (res.n == n) & (res.s == s)
        # each full sequence stands for 2^(max - n) equally likely tails: x_1 mean is exact
        assert table[n, s] == pytest.approx(x[at, 0].mean(), abs=1e-12)


def test_plain_mean_is_biased_under_the_same_stopping():
    """The reason for the table: s/n after optional stopping is biased (p = 0.1: 0.052)."""
    cfg = RULES[0]
    x = all_sequences(cfg.max_rollouts)
    res = A.run_rounds(x, cfg)
    w = seq_probs(x, 0.1)
    plain = (w * res.s / res.n).sum()
    # hand-derived: stop at (3,3) w.p. 0.001; else mixed round 1 and E[s/9 | mixed] with
    # E[s_1 | mixed] = (0.3 − 3·0.001) / 0.27, E[s_2] = 0.6
    mixed = 1 - 0.9 ** 3 - 0.1 ** 3
    expect = 0.001 + mixed * (((0.3 - 0.003) / mixed) + 0.6) / 9
    assert plain == pytest.approx(expect, abs=1e-12)
    assert plain == pytest.approx(0.052, abs=1e-12)


@pytest.mark.parametrize("cfg", RULES)
def test_stop_distribution_matches_enumeration(cfg):
    x = all_sequences(cfg.max_rollouts)
    res = A.run_rounds(x, cfg)
    for p in (0.0, 0.2, 0.75, 1.0):
        d = A.stop_distribution(p, cfg)
        assert d.sum() == pytest.approx(1.0, abs=1e-12)
        w = seq_probs(x, p)
        ref = np.zeros_like(d)
        np.add.at(ref, (res.n, res.s), w)
        np.testing.assert_allclose(d, ref, atol=1e-12)
        assert A.expected_rollouts(p, cfg) == pytest.approx((w * res.n).sum(), abs=1e-9)


def test_fixed_k_is_the_plain_mean():
    t = A.estimate_table(A.fixed_rule(9))
    np.testing.assert_allclose(t[9, :10], np.arange(10) / 9, atol=1e-15)
    assert np.isnan(t[:9]).all()
    cfg = A.Rule(round_size=3, min_rollouts=0, max_rollouts=9, stop_stderr=-1.0)
    res = A.run_rounds(all_sequences(9), cfg)
    assert np.all(res.n == 9)
    np.testing.assert_allclose(res.value, res.s / 9, atol=1e-7)


def test_hand_derived_table_entries():
    """Unanimity stop after 3, then rounds of 3 to 9 (a mixed state never stops early again):
    f(9, 1) = 1/3: of the 9 sequences with one success, the 6 with it after the first 3 stopped at
    (3, 0); of the 3 left, one has it first."""
    cfg = RULES[0]
    t = A.estimate_table(cfg)
    assert t[3, 0] == 0.0 and t[3, 3] == 1.0
    assert t[9, 1] == pytest.approx(1 / 3)
    # f(9, s) = [C(8,s-1) - C(6,s-3)] / [C(9,s) - C(6,s) - C(6,s-3)]
    from math import comb

    c = lambda n, k: comb(n, k) if 0 <= k <= n else 0
    for s in range(1, 9):
        assert t[9, s] == pytest.approx((c(8, s - 1) - c(6, s - 3)) / (c(9, s) - c(6, s) - c(6, s - 3)))
    assert np.isnan(t[9, [0, 9]]).all() and np.isnan(t[6, [0, 6]]).all()
    assert not np.isnan(t[6, 1:6]).any() and np.isnan(t[[1, 2, 4, 5, 7, 8]]).all()


BUDGET_RULES = [A.Rule(round_size=1, min_rollouts=2, max_rollouts=5, stop_stderr=0.25),
                A.Rule(round_size=1, min_rollouts=3, max_rollouts=5, stop_stderr=0.0)]


def state_pairs(n):
    """{0,1}[4^n, 2, n]: every joint outcome of two states with n rollouts each."""
    one = all_sequences(n)
    return np.stack([np.repeat(one, len(one), 0), np.tile(one, (len(one), 1))], axis=1)


@pytest.mark.parametrize("cfg", BUDGET_RULES)
@pytest.mark.parametrize("budget", [7, 9])
def test_total_budget_respected_and_unbiased(cfg, budget):
    """Two states share a budget; the random priority does not look at outcomes, so each state's
    estimate stays exactly unbiased (enumerating both states' sequences jointly)."""
    pairs = state_pairs(cfg.max_rollouts)
    n = np.zeros(pairs.shape[:2], np.int64)
    vals = np.zeros(pairs.shape[:2])
    for i, seqs in enumerate(pairs):
        res = A.run_rounds(seqs, cfg, total_budget=budget, rng=np.random.default_rng(1))
        n[i], vals[i] = res.n, A.estimate_table(cfg)[res.n, res.s]
    assert n.sum(1).max() <= budget and n.max() <= cfg.max_rollouts
    assert n.sum(1).max() > 2 * cfg.min_rollouts  # the budget let some state go on
    for p0, p1 in [(0.1, 0.6), (0.5, 0.5), (0.9, 0.02)]:
        w = seq_probs(pairs[:, 0], p0) * seq_probs(pairs[:, 1], p1)
        assert abs((w * vals[:, 0]).sum() - p0) < 1e-9
        assert abs((w * vals[:, 1]).sum() - p1) < 1e-9


def test_priority_from_own_outcomes_breaks_unbiasedness():
    """Control for the test above: ranking by a state's own results (here its success rate, with
    one slot left after round 1) is NOT allowed: the estimate becomes biased."""
    cfg = BUDGET_RULES[1]
    pairs = state_pairs(cfg.max_rollouts)
    vals = np.zeros(pairs.shape[:2])
    for i, seqs in enumerate(pairs):
        n, s = np.zeros(2, np.int64), np.zeros(2, np.int64)
        running = np.ones(2, bool)
        while running.any():
            s = np.where(running, s + [seqs[j, n[j]] for j in range(2)], s)
            n = np.where(running, n + 1, n)
            running = A.continue_mask(n, s, running, cfg, budget_left=7 - int(n.sum()), priority=s / n)
        vals[i] = A.estimate_table(cfg)[n, s]
    w = seq_probs(pairs[:, 0], 0.3) * seq_probs(pairs[:, 1], 0.3)
    assert abs((w * vals[:, 0]).sum() - 0.3) > 1e-3


def test_budget_must_cover_first_round():
    with pytest.raises(ValueError, match="total_budget"):
        A.run_rounds(np.zeros((4, 9), int), RULES[0], total_budget=11)


def test_deterministic_under_seed():
    rng = np.random.default_rng(5)
    x = (rng.random((200, 12)) < rng.random((200, 1))).astype(int)
    cfg = RULES[1]
    a = A.run_rounds(x, cfg, total_budget=900, rng=np.random.default_rng(3))
    b = A.run_rounds(x, cfg, total_budget=900, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a.n, b.n)
    np.testing.assert_array_equal(a.value, b.value)
    assert a.n.sum() <= 900


@pytest.mark.parametrize("cfg", RULES)
def test_settled_states_stop_at_first_allowed_round(cfg):
    """p = 0 or 1: unanimous, se = 0, so the state stops at the first round end >= min_rollouts."""
    ends = A.round_ends(cfg)  # noqa
    first_allowed = ends[ends >= cfg.min_rollouts][0]
    for p in (0, 1):
        res = A.run_rounds(np.full((3, cfg.max_rollouts), p), cfg)
        assert np.all(res.value == p) and np.all(res.n == first_allowed)


def test_single_rollout():
    res = A.run_rounds(np.array([[0], [1]]), A.fixed_rule(1))
    assert res.n.tolist() == [1, 1] and res.value.tolist() == [0.0, 1.0]


def test_masked_states_and_bad_input():
    cfg = RULES[0]
    res = A.run_rounds(np.ones((2, 3, 9), int), cfg, states=np.array([[1, 0, 1], [0, 0, 1]], bool))
    assert res.n.tolist() == [[3, 0, 3], [0, 0, 3]]
    assert res.value.tolist() == [[1, 0, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="cannot be reached"):
        A.adaptive_values(np.array([4]), np.array([2]), cfg)
    with pytest.raises(ValueError, match="outside"):
        A.adaptive_values(np.array([9]), np.array([10]), cfg)
    with pytest.raises(ValueError, match="max_rollouts"):
        A.validate(A.Rule(round_size=4, min_rollouts=4, max_rollouts=9))
    with pytest.raises(ValueError, match="round_size"):
        A.validate(A.Rule(round_size=0))
    with pytest.raises(ValueError, match="differs"):
        A.validate(A.AdaptiveConfig(rules=(A.Rule(3, 3, 9), A.Rule(2, 2, 8))))
    with pytest.raises(ValueError, match="tier"):
        A.adaptive_values(np.array([9]), np.array([1]), A.AdaptiveConfig(), tier=np.array([3]))


def test_evidence_tiers_hand_case():
    """Episodes (unique-state ids per step slot, reward): [0,1,2] R=1, [0,1,3] R=0, [0,4,-] R=1;
    round 1 of 3 rollouts: successes u0 1, u1 3, u2 3, u3 0, u4 3."""
    ids = np.array([[0, 1, 2], [0, 1, 3], [0, 4, -1]])
    tiers = A.evidence_tiers(ids, np.array([1.0, 0.0, 1.0]), np.full(5, 3), np.array([1, 3, 3, 0, 3]))
    # u0, u1: rewards disagree -> 2; u2: R=1 and neighbour u1 all ones -> 0;
    # u3: R=0 but neighbour u1 all ones -> 1; u4: R=1 but neighbour u0 mixed -> 1
    assert tiers.tolist() == [2, 2, 0, 1, 1]
    # a state's own round-1 result never enters its own tier
    other = A.evidence_tiers(ids, np.array([1.0, 0.0, 1.0]), np.full(5, 3), np.array([1, 3, 0, 0, 0]))
    assert other[2] == tiers[2] and other[4] == tiers[4]
    with pytest.raises(ValueError, match="state id"):
        A.evidence_tiers(ids, np.ones(3), np.full(4, 3), np.zeros(4, int))


TIERED = A.AdaptiveConfig(rules=(A.Rule(1, 1, 4, 0.0), A.Rule(1, 2, 4, 0.0), A.Rule(1, 4, 4, 0.0)))


def tiered_chain_values(own_tier: bool):
    """Two states u0 -> u1 of one episode with reward R: every (x0, x1, R) and the estimates."""
    pairs = state_pairs(4)
    ids = np.array([[0, 1]])
    rows = []
    for r in (0.0, 1.0):
        for seqs in pairs:
            if own_tier:  # forbidden: the state's own first rollout decides its tier
                tier = lambda n, s, r=r: np.where(s == r * n, 0, 2)
            else:
                tier = lambda n, s, r=r: A.evidence_tiers(ids, np.array([r]), n, s)
            res = A.run_rounds(seqs, TIERED, tier=tier)
            rows.append((r, seqs, res.value.astype(np.float64), res.n))
    return rows


def test_evidence_tiers_keep_estimates_unbiased():
    """Tiers from R and the neighbour's round 1: still exactly unbiased (joint enumeration)."""
    rows = tiered_chain_values(own_tier=False)
    tiers_seen = set()
    for p0, p1, q in [(0.2, 0.7, 0.6), (0.05, 0.5, 0.1), (0.9, 0.95, 0.99)]:
        e0 = e1 = total = 0.0
        for r, seqs, val, n in rows:
            w = (q if r else 1 - q) * seq_probs(seqs[:1], p0)[0] * seq_probs(seqs[1:], p1)[0]
            e0, e1, total = e0 + w * val[0], e1 + w * val[1], total + w
            tiers_seen.add(tuple(n))
        assert total == pytest.approx(1.0, abs=1e-12)
        assert abs(e0 - p0) < 1e-6 and abs(e1 - p1) < 1e-6  # f32 values
    assert len(tiers_seen) > 3  # rollouts really vary with the evidence


def test_tier_from_own_rollouts_is_biased():
    rows = tiered_chain_values(own_tier=True)
    p0, p1, q = 0.2, 0.7, 0.6
    e0 = sum((q if r else 1 - q) * seq_probs(seqs[:1], p0)[0] * seq_probs(seqs[1:], p1)[0] * val[0]
             for r, seqs, val, n in rows)
    assert abs(e0 - p0) > 1e-2
