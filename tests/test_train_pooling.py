"""Pooled MC values through the values phase (`train.values.MCGroups` with `pool`): a real tiny
model continuing real arithmetic episodes from a state at every response token, budgets that
bind. The pooled values must be what a hand re-derivation from the decoded tokens gives, and each
state's own draws must be those of the unpooled decode (the wider budget changes no token)."""
import copy

import jax
import numpy as np
import pytest
from test_train_adaptive import CFG, GOOD, TASK, TOKENIZER, build_setup

from vinejax import config as config_lib
from vinejax import sampling
from vinejax.config import ConfigError
from vinejax.sampling.stops import stop_automaton
from vinejax.train import host_work
from vinejax.train.estimators import get_estimator
from vinejax.train.values import MCGroups, MCOptions, StepStates, mc_rewards, mc_state_values

SCFG = sampling.SamplingConfig(max_new_tokens=2, temperature=0.7, eos_ids=(TOKENIZER.eos_token_id,))
K, STATES = 8, 7
STOPS = ("=", "+1")  # "+1" may begin in a state's last token ("42+"): no pooling across that boundary


@pytest.fixture(scope="module")
def setup():
    s = build_setup()
    ep = s["ep"]
    starts = ep.prompt_lens[:, None] + np.arange(STATES)[None]   # a state at each of the first 5 response tokens
    s["states"] = StepStates.of(starts, np.full(len(starts), STATES), max_value_step=STATES - 2)
    s["env"] = sampling.RolloutEnv(s["params"], CFG, SCFG, stop_automaton(TOKENIZER, STOPS), context_size=200,
                                   chunk_rows=32, tokenizer=TOKENIZER, task=TASK, grade_workers=0)
    return s


def hand_values(setup, key, by_step=()):
    """V̂ of every estimated state re-derived by hand: decode every state with the budget that
    lets it pass through any later estimated state, grade each continuation's text, then pool the
    first by_step[i] (K where empty) continuations of each state i (draw k has the same key
    whatever the count)."""
    ep, st, env = setup["ep"], setup["states"], setup["env"]
    b, s = st.starts.shape
    own = env.budgets(st.starts)
    est = st.estimated
    wide = np.array([[max([own[r, i]] + [st.starts[r, j] - st.starts[r, i] + own[r, j]
                                          for j in range(i + 1, s) if est[r, j]]) for i in range(s)] for r in range(b)])
    env_wide = env.replace(scfg=sampling.SamplingConfig(max_new_tokens=int(wide.max()), temperature=0.7,
                                                        eos_ids=(TOKENIZER.eos_token_id,)))
    out = sampling.Trajectories(env_wide, ep.tokens, ep.total_lens, ids=np.arange(b)).continue_from(
        st.starts, key, K, state_mask=est, budgets=wide)
    values, extra, cut, straddled = np.zeros((b, s)), 0, 0, [0]
    text_of = lambda ids: TOKENIZER.decode([t for t in ids if t != TOKENIZER.eos_token_id], skip_special_tokens=True)
    for r in range(b):
        draws = {j: [] for j in range(s) if est[r, j]}
        for i in draws:
            prefix = text_of(ep.tokens[r, ep.prompt_lens[r]:st.starts[r, i]].tolist())
            for k in range(by_step[min(i, len(by_step) - 1)] if by_step else K):
                n, fin = int(out.lengths[r, i, k]), int(out.finish_reason[r, i, k])
                toks = out.tokens[r, i, k, :n].tolist()
                ended = fin in (sampling.FINISH_EOS, sampling.FINISH_STOP)
                text = text_of(toks)
                cuts = [text.find(x) for x in STOPS if x in text]
                text = prefix + (text[:min(cuts)] if cuts else text)
                grade = float(ended and text[-1:] in GOOD)
                draws[i].append(grade * (n <= own[r, i]))
                cut += grade * (n > own[r, i])  # a success its own budget cuts off
                for j in draws:
                    d = st.starts[r, j] - st.starts[r, i]
                    seg = ep.tokens[r, st.starts[r, i]:st.starts[r, j]].tolist()
                    seg_text = text_of(seg)
                    clean = not any(x in seg_text or any(seg_text.endswith(x[:m]) for m in range(1, len(x)))
                                    for x in STOPS)
                    if j > i and clean and toks[:d] == seg:
                        draws[j].append(grade * (n - d <= own[r, j]))
                        extra += 1
                    straddled[0] += j > i and not clean and toks[:d] == seg
        for j, x in draws.items():
            values[r, j] = np.mean(x)
    return values, extra, cut, straddled[0]


def test_pooled_values_match_a_hand_derivation(setup):
    key = jax.random.key(3)
    values, metrics = mc_state_values(setup["env"], setup["ep"], setup["states"], key, K, options=MCOptions(pool=True))
    want, extra, cut, straddled = hand_values(setup, key)
    est = setup["states"].estimated
    assert extra >= 10 and cut > 0 and straddled > 0  # pooled; successes past their own budget; not pooled: half a stop
    np.testing.assert_allclose(values[est], want[est], atol=1e-6)
    assert np.all(values[~est] == 0)
    assert metrics["mc/pooled_draws"] == pytest.approx(extra / est.sum())


def test_rollouts_by_step_pooled_and_plain(setup):
    """Own counts by step index (`vineppo.rollouts_by_step`): pooled values as re-derived by hand,
    plain values the mean of each state's first counts of the K continuations."""
    key, by_step = jax.random.key(3), (8, 4, 2)
    est = setup["states"].estimated
    values, metrics = mc_state_values(setup["env"], setup["ep"], setup["states"], key, 99,
                                      options=MCOptions(pool=True, by_step=by_step))
    want, extra, _, _ = hand_values(setup, key, by_step)
    assert extra >= 3
    np.testing.assert_allclose(values[est], want[est], atol=1e-6)
    plain, metrics = mc_state_values(setup["env"], setup["ep"], setup["states"], key, 99,
                                     options=MCOptions(by_step=by_step))
    rewards, _, _ = mc_rewards(setup["env"], setup["ep"], setup["states"], key, K)
    counts = np.array([8, 4] + [2] * (est.shape[1] - 2))
    want = np.array([[rewards[b, i, :counts[i]].mean() for i in range(est.shape[1])] for b in range(len(est))])
    np.testing.assert_allclose(plain[est], want[est], atol=1e-6)
    assert metrics["mc/rollouts"] == sum(counts[i] for _, i in zip(*np.nonzero(est)))


def test_pooling_keeps_each_states_own_draws(setup):
    key = jax.random.key(3)
    plain, _, _ = mc_rewards(setup["env"], setup["ep"], setup["states"], key, K)
    with host_work.session(overlap=False) as host:
        groups = MCGroups(setup["env"], key, K, host, MCOptions(pool=True))
        for rows in (np.arange(6), np.arange(6, len(plain))):  # in two groups: the same draws
            groups.add(setup["ep"].select(rows), rows, setup["states"].select(rows))
        pooled, _, _ = groups.finish(setup["states"].estimated)
    np.testing.assert_array_equal(pooled, plain)
    assert plain.sum() > 0


def test_config_pooling_and_counts_by_step_for_fixed_k_only():
    c = config_lib.base_config()
    assert not c.vineppo.pool_continuations  # the paper's estimator by default
    c.vineppo.pool_continuations = True
    config_lib.validate(c)
    assert get_estimator(c).options.pool
    for key in ("adaptive", "allocation"):
        changed = copy.deepcopy(c)
        changed.vineppo[key].enabled = True
        with pytest.raises(ConfigError, match=r"^config key 'vineppo.pool_continuations': works with fixed K only"):
            config_lib.validate(changed)
    c.vineppo.rollouts_by_step = (9, 4, 1)
    config_lib.validate(c)
    assert get_estimator(c).options.by_step == (9, 4, 1)
    for value, message in [((9, 0), "must be integers >= 1"), ((9.5,), "must be integers >= 1")]:
        changed = copy.deepcopy(c)
        changed.vineppo.rollouts_by_step = value
        with pytest.raises(ConfigError, match=f"^config key 'vineppo.rollouts_by_step': {message}"):
            config_lib.validate(changed)
    changed = copy.deepcopy(c)
    changed.vineppo.pool_continuations, changed.vineppo.allocation.enabled = False, True
    with pytest.raises(ConfigError, match=r"^config key 'vineppo.rollouts_by_step': works with fixed K only"):
        config_lib.validate(changed)
