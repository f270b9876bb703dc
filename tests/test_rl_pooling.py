"""Pooled MC values (`vinejax.rl.pooling`): exact unbiasedness by enumerating every outcome of a
small token-level policy (budgets that bind, a stop sequence that straddles a state boundary), and
what breaks it: no extended budget, no clean-boundary rule."""
import itertools

import numpy as np
import pytest

from vinejax.rl import pooling as P
from vinejax.sampling.core import FINISH_EOS, FINISH_LENGTH, FINISH_STOP
from vinejax.sampling.stops import token_sequence_table

EOS, VOCAB = 4, 5


def policy(prefix: tuple) -> dict:
    """π(next token | prefix) over 1, 2, 3 and EOS: a fixed irregular table; EOS at length 5."""
    if len(prefix) >= 5:
        return {EOS: 1.0}
    w = np.array([1 + (3 * len(prefix) + 2 * prefix[-1] + t) % 4 for t in range(4)], float)
    return dict(zip((1, 2, 3, EOS), w / w.sum()))


def reward(seq: tuple) -> float:
    """The task's grade of a finished text: an irregular function of its tokens."""
    return float((2 * seq.count(1) + seq.count(3) + len(seq)) % 3 == 0)


def outcomes(prefix: tuple, budget: int, table):
    """Every continuation of `prefix` decoded as the sampler does (eos / stop sequence / budget):
    [(tokens, finish, probability)]."""
    done = []

    def walk(toks, state, prob):
        for tok, q in policy(prefix + toks).items():
            nxt, st = toks + (tok,), (table[state, tok] if table is not None else 0)
            if tok == EOS:
                done.append((nxt, FINISH_EOS, prob * q))
            elif st < 0:
                done.append((nxt, FINISH_STOP, prob * q))
            elif len(nxt) >= budget:
                done.append((nxt, FINISH_LENGTH, prob * q))
            else:
                walk(nxt, st, prob * q)

    walk((), 0, 1.0)
    return done


def true_value(prefix, budget, table) -> float:
    return sum(q * reward(prefix + t) for t, f, q in outcomes(prefix, budget, table) if f != FINISH_LENGTH)


EPISODE = (7, 1, 2, 1, EOS)  # prompt token 7; steps (1), (2), (1, EOS)
STARTS = np.array([1, 2, 3])  # states s0 = (7,), s1 = (7, 1), s2 = (7, 1, 2)


def expected_values(ks: tuple, max_new: int, table, extend: bool = True, clean_rule: bool = True):
    """E V̂ of each state over every joint outcome of ks[i] continuations from state i (0: not
    estimated), one row per joint outcome."""
    est = (np.array(ks) > 0)[None]
    budgets = np.full((1, 3), max_new)
    decode_budgets = P.extended_budgets(STARTS[None], budgets, est) if extend else budgets
    per_state = [outcomes(EPISODE[:s], int(decode_budgets[0, i]), table) for i, s in enumerate(STARTS)]
    draws = [list(itertools.product(o, repeat=k)) for o, k in zip(per_state, ks)]
    rows = list(itertools.product(*draws))                    # every joint outcome
    b, k, n = len(rows), max(ks), int(decode_budgets.max())
    toks = np.zeros((b, 3, k, n), np.int64)
    lengths = np.zeros((b, 3, k), np.int64)
    finish = np.zeros((b, 3, k), np.int64)
    graded = np.zeros((b, 3, k))
    prob = np.ones(b)
    for r, row in enumerate(rows):
        for i, conts in enumerate(row):
            for j, (t, f, q) in enumerate(conts):
                toks[r, i, j, :len(t)], lengths[r, i, j], finish[r, i, j] = t, len(t), f
                graded[r, i, j] = reward(EPISODE[:STARTS[i]] + t) if f != FINISH_LENGTH else 0.0
                prob[r] *= q
    tokens = np.broadcast_to(np.array(EPISODE), (b, len(EPISODE)))
    starts, est_b = np.broadcast_to(STARTS, (b, 3)), np.broadcast_to(est, (b, 3))
    tables = [table] if (table is not None and clean_rule) else []
    clean = P.clean_boundaries(tables, tokens, starts, est_b)
    cont = P.Continuations(toks, lengths, finish)
    through = P.pass_through(cont, tokens, starts, clean)
    drawn = np.broadcast_to(np.arange(k)[None, None] < np.array(ks)[None, :, None], (b, 3, k))
    value, count = P.pooled_values(graded, cont, through, starts, np.broadcast_to(budgets, (b, 3)), drawn)
    assert abs(prob.sum() - 1) < 1e-9
    return prob @ value.astype(np.float64), count, through


@pytest.mark.parametrize("ks,max_new", [((1, 1, 1), 2), ((1, 1, 1), 4), ((2, 2, 0), 1), ((2, 1, 1), 1)])
def test_pooled_values_unbiased_by_enumeration(ks, max_new):
    """E V̂(s) = V(s) for every estimated state, with own counts that differ by state (as
    `vineppo.rollouts_by_step` sets them), budgets that bind (max_new 2: s0's continuations that
    pass through s2 need 2 more tokens than s0's own budget) and a stop sequence (2, 3) that
    straddles s2's boundary (the episode's step 1 ends with 2)."""
    table = token_sequence_table([[2, 3]], VOCAB).next_state
    mean, count, through = expected_values(ks, max_new, table)
    est = np.array(ks) > 0
    truth = np.array([true_value(EPISODE[:s], max_new, table) for s in STARTS])
    np.testing.assert_allclose(mean[est], truth[est], atol=2e-6)  # f32 values
    assert count[:, 1].max() > ks[1] and count[:, 0].max() == ks[0]  # s1 pooled draws from s0; s0 has none
    assert not through[:, :, :, 2].any()                             # s2: not clean ((2, 3) half matched) or not estimated


def test_pooling_needs_extended_budgets_and_clean_boundaries():
    """The enumeration can fail: decoding s0 with its own budget (a passing continuation of s0 is
    cut where one of s1 would go on) or pooling across a boundary where the stop sequence is half
    matched (s0's continuation stops at 3 where s2's would not) biases the pooled values."""
    table = token_sequence_table([[2, 3]], VOCAB).next_state
    truth = np.array([true_value(EPISODE[:s], 2, table) for s in STARTS])
    short, _, _ = expected_values((1, 1, 1), 2, table, extend=False)
    assert abs(short[1] - truth[1]) > 1e-3
    straddle, _, through = expected_values((1, 1, 1), 4, table, clean_rule=False)
    assert through[:, :, :, 2].any() and abs(straddle[2] - true_value(EPISODE[:3], 4, table)) > 1e-3


def test_extended_budgets_and_offsets():
    starts = np.array([[1, 4, 9, 0]])
    est = np.array([[True, True, True, False]])
    budgets = np.array([[10, 10, 6, 10]])
    assert P.later_offsets(starts, est)[0, 0].tolist() == [-1, 3, 8, -1]
    # s0: max(10, 3 + 10, 8 + 6) = 14; s1: max(10, 5 + 6); s2: its own; s3 not estimated: own
    assert P.extended_budgets(starts, budgets, est).tolist() == [[14, 11, 6, 10]]
