"""Budget-global rollout allocation: exact unbiasedness by enumerating every pilot outcome of a
small case, the fold independence it rests on, budget / floor / cap guarantees, greedy optimality
and the stop table against brute force."""
import itertools
import math

import numpy as np
import pytest

from vinejax.rl import allocation as G

# Two episodes through a shared prompt: ep0 = states 0, 1, 2; ep1 = states 0, 3, 4 (4 is known).
# Folds (step parity): {0, 2, 4} and {1, 3}.
IDS = np.array([[0, 1, 2], [0, 3, 4]])
TOKENS = np.array([[3.0, 1.0, 2.0], [2.0, 5.0, 1.0]])
KNOWN = np.array([np.nan, np.nan, np.nan, np.nan, 1.0])


def binom(n, k, p):
    return math.comb(n, k) * p ** k * (1 - p) ** (n - k) if 0 <= k <= n else 0.0


def expected_values(cfg, rewards, ps_list, allocate=G.allocate):
    """E[V̂ | R] per state for each p in ps_list, exactly: every pilot outcome (binomial weights),
    and for each the expectation over the round-2 draws given the counts."""
    states = G.iteration_states(IDS, rewards, TOKENS, KNOWN)
    pilot = G.pilot_counts(states, cfg)
    unknown = np.nonzero(np.isnan(KNOWN))[0]
    ev = np.zeros((len(ps_list), len(KNOWN)))
    counts_seen = set()
    for s0 in itertools.product(*(range(pilot[u] + 1) for u in unknown)):
        ps0 = np.zeros(len(KNOWN), np.int64)
        ps0[unknown] = s0
        alloc = allocate(states, pilot, ps0, cfg)
        counts_seen.add((tuple(alloc.n), tuple(alloc.stop_rule & (alloc.n > alloc.pilot))))
        more = alloc.n - pilot
        # vals[j, u]: V̂_u (the module's own `values`) after j round-2 successes (j <= more_u)
        vals = np.stack([G.values(states, alloc, ps0 + np.minimum(j, more)) for j in range(more.max() + 1)])
        for k, ps in enumerate(ps_list):
            w = np.prod([binom(pilot[u], ps0[u], ps[u]) for u in unknown])
            for u in range(len(KNOWN)):
                ev[k, u] += w * sum(binom(more[u], j, ps[u]) * float(vals[j, u]) for j in range(more[u] + 1))
    return ev, counts_seen


CFGS = [
    G.AllocationConfig(pilot=2, rollouts_per_state=4.0, max_rollouts=6, stop_settled=2.0),  # no stop rule
    G.AllocationConfig(pilot=3, rollouts_per_state=4.5, max_rollouts=7, stop_settled=0.0),  # every state under it
    G.AllocationConfig(pilot=3, rollouts_per_state=5.0, max_rollouts=8, stop_settled=0.5),  # depends on evidence
]
PS = [np.array([0.3, 0.8, 0.1, 0.55, 1.0]), np.array([0.0, 1.0, 0.5, 0.05, 1.0]), np.array([0.97, 0.6, 0.0, 1.0, 1.0])]


@pytest.mark.parametrize("cfg", CFGS)
@pytest.mark.parametrize("rewards", [(0.0, 1.0), (1.0, 1.0)])
def test_unbiased_by_enumeration(cfg, rewards):
    """E[V̂_u | R] = p_u exactly for every state, every R, with and without the stop rule."""
    ev, counts = expected_values(cfg, np.array(rewards), PS)
    np.testing.assert_allclose(ev, np.stack(PS), atol=1e-6)  # f32 values
    assert len({n for n, _ in counts}) >= 3  # the counts really move with the pilots
    assert any(any(t) for _, t in counts) == (cfg.stop_settled < 1)  # the stop table is exercised


def test_reading_own_pilot_is_biased():
    """The negative control: allocate with every pilot readable (a state's own included, one fold)
    and the plain mean is biased."""
    cfg = CFGS[0]

    def own_fold_allocate(states, pilot_n, pilot_s, cfg):
        u = len(states.known)
        p_mixed, var = G.evidence_posterior(states, pilot_n, pilot_s, np.ones(u, bool), cfg)
        own = np.where((pilot_s == 0) | (pilot_s == pilot_n), 0.0, 1.0)  # the state's own pilot, mixed or not
        start = np.where(np.isnan(states.known), pilot_n, 0)
        cap = np.where(np.isnan(states.known), cfg.max_rollouts, 0)
        n = G.greedy_counts(p_mixed * var * own + 1e-9, start, cap, G.iteration_budget(states, cfg) - int(start.sum()))
        return G.Allocation(n, start, np.zeros(u, bool))

    ev, _ = expected_values(cfg, np.array([0.0, 1.0]), PS[:1], allocate=own_fold_allocate)
    assert np.max(np.abs(ev[0] - PS[0])) > 1e-2


def random_chains(rng, problems=6, samples=4):
    """ids / rewards / tokens of chains of 2..6 steps sharing their prompt state."""
    rows, rewards, toks, u = [], [], [], problems
    for j in range(problems):
        for _ in range(samples):
            length = rng.integers(2, 7)
            rows.append([j] + list(range(u, u + length - 1)))
            u += length - 1
            rewards.append(float(rng.random() < 0.5))
            toks.append(rng.integers(1, 40, length))
    ids = np.full((len(rows), 6), -1)
    tokens = np.zeros(ids.shape)
    for b, (r, t) in enumerate(zip(rows, toks)):
        ids[b, : len(r)] = r
        tokens[b, : len(t)] = t
    return ids, np.array(rewards), tokens, u


@pytest.mark.parametrize("stop_settled", [2.0, 0.6])
def test_counts_ignore_own_rollouts(stop_settled):
    """A state's count never moves with its own pilot, except through its own stop rule (and
    then only between "unanimous" and "mixed"); a state with no stop rule ignores its whole fold."""
    rng = np.random.default_rng(0)
    ids, rewards, tokens, u = random_chains(rng)
    states = G.iteration_states(ids, rewards, tokens, num_states=u)
    cfg = G.AllocationConfig(pilot=3, stop_settled=stop_settled)
    pilot = G.pilot_counts(states, cfg)
    fold = G.folds(ids, u)
    assert set(pilot.tolist()) == {2, 3}  # 2 where the rewards already disagree
    base_s = rng.integers(0, pilot + 1)
    base = G.allocate(states, pilot, base_s, cfg)
    for _ in range(20):
        i = rng.integers(u)
        s = base_s.copy()
        s[i] = rng.integers(0, pilot[i] + 1)
        alt = G.allocate(states, pilot, s, cfg)
        assert alt.stop_rule[i] == base.stop_rule[i]  # the rule comes from the evidence only
        unanimous = lambda x: x in (0, pilot[i])  # noqa: E731
        if not base.stop_rule[i] or unanimous(s[i]) == unanimous(base_s[i]):
            assert alt.n[i] == base.n[i]
        if stop_settled > 1:  # no rule: the whole fold ignores the change
            same = fold == fold[i]
            np.testing.assert_array_equal(alt.n[same], base.n[same])
    assert base.stop_rule.any() == (stop_settled < 1)


@pytest.mark.parametrize("per_state", [3.0, 4.5, 9.0, 40.0])
def test_budget_floor_and_cap(per_state):
    rng = np.random.default_rng(1)
    ids, rewards, tokens, u = random_chains(rng)
    known = np.full(u, np.nan)
    known[[2, 7]] = [0.0, 0.4]
    states = G.iteration_states(ids, rewards, tokens, known)
    cfg = G.AllocationConfig(pilot=3, rollouts_per_state=min(per_state, 32.0), stop_settled=2.0)
    pilot = G.pilot_counts(states, cfg)
    p_mixed, _ = G.evidence_posterior(states, pilot, pilot, np.zeros(u, bool), cfg)
    assert pilot.tolist() == [0 if i in (2, 7) else 2 if p_mixed[i] == 1 else 3 for i in range(u)]
    alloc = G.allocate(states, pilot, rng.integers(0, pilot + 1), cfg)
    n = alloc.n
    unknown = np.isnan(known)
    assert np.all(n[~unknown] == 0) and np.all(n >= pilot) and np.all(n <= 32)
    assert n.sum() == min(G.iteration_budget(states, cfg), 32 * unknown.sum())
    assert G.iteration_budget(states, cfg) == round(cfg.rollouts_per_state * unknown.sum())
    v = G.values(states, alloc, np.minimum(n, 1))
    assert v[2] == 0.0 and v[7] == pytest.approx(0.4)
    # with the stop rule the budget is an upper bound, and stopped states keep their pilot
    cfg = cfg._replace(stop_settled=0.0)
    s = np.where(np.arange(u) % 2 == 0, 0, 1) * (pilot > 0)
    alloc = G.allocate(states, pilot, s, cfg)
    assert alloc.n.sum() <= G.iteration_budget(states, cfg)
    stopped = alloc.stop_rule & ((s == 0) | (s == pilot))
    assert stopped.any() and np.all(alloc.n[stopped] == 3)


def test_greedy_is_optimal():
    """The greedy split equals the best of every integer split (brute force)."""
    rng = np.random.default_rng(2)
    for _ in range(20):
        score = rng.random(3) * np.array([1.0, 5.0, 0.2])
        start = rng.integers(1, 3, 3)
        cap = start + rng.integers(0, 6, 3)
        extra = int(rng.integers(0, (cap - start).sum() + 1))
        n = G.greedy_counts(score, start, cap, extra)
        assert n.sum() == start.sum() + extra and np.all(n <= cap)
        best = min((score / (start + np.array(d))).sum()
                   for d in itertools.product(*(range(c + 1) for c in cap - start)) if sum(d) == extra)
        assert (score / n).sum() == pytest.approx(best, rel=1e-12)


@pytest.mark.parametrize("pilot,more", [(3, 1), (3, 4), (4, 3), (5, 2), (3, 0)])
def test_stop_table_is_conditional_mean_of_first_rollout(pilot, more):
    """f(s) = mean of x_1 over every sequence with a mixed pilot and s successes in all."""
    table = G.stop_table(pilot, more)
    seqs = np.array(list(itertools.product([0, 1], repeat=pilot + more)))
    head = seqs[:, :pilot].sum(1)
    reach = (head > 0) & (head < pilot) if more else np.ones(len(seqs), bool)
    for s in range(pilot + more + 1):
        at = reach & (seqs.sum(1) == s)
        if at.any():
            assert table[s] == pytest.approx(seqs[at, 0].mean(), abs=1e-12)
        else:
            assert np.isnan(table[s])


def test_step_token_counts():
    starts = np.array([[5, 9, 15, 0], [7, 8, 0, 0]])
    np.testing.assert_array_equal(G.step_token_counts(starts, np.array([3, 1]), np.array([20, 12])),
                                  [[4, 6, 5, 0], [5, 0, 0, 0]])


def test_weights_and_evidence_hand_case():
    states = G.iteration_states(IDS, np.array([0.0, 1.0]), TOKENS, KNOWN)
    # state 0: A_0 of both episodes (3 + 2); state 1: A_0, A_1 of ep0 (3 + 1); state 4: known
    np.testing.assert_allclose(G.advantage_weights(states), [5.0, 4.0, 3.0, 7.0, 6.0])
    np.testing.assert_array_equal(G.state_depth(IDS, 5), [0, 1, 2, 1, 2])
    cfg = G.AllocationConfig()
    n = np.full(5, 3)
    s = np.array([3, 3, 3, 0, 0])
    p_mixed, var = G.evidence_posterior(states, n, s, np.array([False, True, False, True, True]), cfg)
    assert p_mixed[0] == 1.0  # its episodes' rewards disagree
    assert p_mixed[4] == 0.0 and var[4] == 0.0  # known
    assert p_mixed[2] < p_mixed[0] and var[0] > 0
    # after a state known to be settled, a state is settled too
    known = np.array([np.nan, 0.0, np.nan, np.nan, 1.0])
    states = G.iteration_states(IDS, np.array([0.0, 1.0]), TOKENS, known)
    p_mixed, _ = G.evidence_posterior(states, n, s, np.zeros(5, bool), cfg)
    assert p_mixed[2] == 0.0


def test_bad_input_is_named():
    states = G.iteration_states(IDS, np.array([0.0, 1.0]), TOKENS, KNOWN)
    with pytest.raises(ValueError, match="pilot"):
        G.validate(G.AllocationConfig(pilot=0))
    with pytest.raises(ValueError, match="rollouts_per_state"):
        G.validate(G.AllocationConfig(rollouts_per_state=40.0))
    with pytest.raises(ValueError, match="prior_settled"):
        G.validate(G.AllocationConfig(prior_settled=(0.6, 0.5)))
    with pytest.raises(ValueError, match="two different step slots"):
        G.iteration_states(np.array([[0, 1], [1, 2]]), np.ones(2), np.ones((2, 2)))
    with pytest.raises(ValueError, match="rewards must be 0/1"):
        G.iteration_states(IDS, np.array([0.5, 1.0]), TOKENS, KNOWN)
    with pytest.raises(ValueError, match="at least one round-1"):
        G.allocate(states, np.array([3, 0, 3, 3, 0]), np.zeros(5, int), G.AllocationConfig())
    with pytest.raises(ValueError, match="no rollouts"):
        G.values(states, G.Allocation(np.zeros(5, int), np.zeros(5, int), np.zeros(5, bool)), np.zeros(5, int))
