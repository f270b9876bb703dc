"""The allocation through the values phase (`train.estimators.allocated`): a real tiny model, real
arithmetic episodes and step states, one-token continuations graded by a rule (the setup of
tests/test_train_adaptive.py). The estimator's values must be `rl.allocation.values` of the
outcomes it drew (re-drawn here in another layout and graded by hand), its budget the group's,
and both rounds must share one trajectory cache."""
import copy
import functools

import jax
import numpy as np
import pytest
from test_train_adaptive import CFG, GOOD, SCFG, TASK, TOKENIZER, build_setup

from vinejax import config as config_lib
from vinejax import sampling
from vinejax.config import ConfigError
from vinejax.rl import allocation
from vinejax.sampling import mc
from vinejax.train.estimators import get_estimator
from vinejax.train.estimators.allocated import allocated_rollouts
from vinejax.train.estimators.mc import AllocatedMonteCarlo, MonteCarlo
from vinejax.train.values import StepStates

ACFG = allocation.AllocationConfig()  # pilot 3, 4.5 per state, at most 32


@pytest.fixture(scope="module")
def setup():
    return build_setup()


def make_env(setup, rows=0, task=TASK):
    return sampling.RolloutEnv(setup["params"], CFG, SCFG, context_size=200, chunk_rows=32, tokenizer=TOKENIZER,
                               task=task, grade_workers=0, group_rows=rows)


def hand_graded(setup, rep, counts, key):
    """int[U] successes among the first counts[u] continuations of each distinct state, drawn with
    `key` as max(counts) continuations of every state and graded by decoding the text by hand."""
    ep, starts = setup["ep"], setup["starts"]
    k = int(counts.max())
    if k == 0:
        return np.zeros(len(rep), np.int64)
    estimated = np.arange(starts.shape[1])[None] < setup["num_steps"][:, None]
    out = sampling.continue_from_prefixes(make_env(setup), ep.tokens, ep.total_lens, starts, key, k,
                                          state_mask=estimated)
    s = np.zeros(len(rep), np.int64)
    for u, (b, j) in enumerate(rep):
        prefix = ep.tokens[b, ep.prompt_lens[b] : starts[b, j]].tolist()
        for i in range(counts[u]):
            token = int(out.tokens[b, j, i, 0])
            ids = prefix + ([token] if token != TOKENIZER.eos_token_id else [])
            s[u] += TOKENIZER.decode(ids, skip_special_tokens=True)[-1:] in GOOD
    return s


def test_values_are_the_allocation_of_the_drawn_outcomes(setup):
    states = StepStates.of(setup["starts"], setup["num_steps"])
    key = jax.random.key(4)
    res, metrics = allocated_rollouts(make_env(setup), setup["ep"], states, setup["rewards"], key, ACFG)
    uid, rep = sampling.unique_prefixes(setup["ep"].tokens, states.starts, states.estimated)
    np.testing.assert_array_equal(res.uid, uid)
    tokens = allocation.step_token_counts(states.starts, states.num_steps, setup["ep"].total_lens)
    group = allocation.iteration_states(uid, setup["rewards"], tokens, num_states=len(rep))
    pilot = allocation.pilot_counts(group, ACFG)
    np.testing.assert_array_equal(res.pilot, pilot)
    pilot_s = hand_graded(setup, rep, pilot, jax.random.fold_in(key, 0))
    alloc = allocation.allocate(group, pilot, pilot_s, ACFG)
    np.testing.assert_array_equal(res.n, alloc.n)
    np.testing.assert_array_equal(res.stop_rule, alloc.stop_rule)
    s = pilot_s + hand_graded(setup, rep, alloc.n - pilot, jax.random.fold_in(key, 1))
    np.testing.assert_array_equal(res.s, s)
    want = allocation.values(group, alloc, s)
    est = uid >= 0
    np.testing.assert_array_equal(res.values[est], want[uid[est]])
    assert np.all(res.values[~est] == 0)
    # the budget is spent (4.5 per distinct state), unevenly, and the metrics say so
    u = len(rep)
    assert res.n.sum() == round(4.5 * u) and len(np.unique(res.n)) > 2 and res.n.max() >= 6
    assert metrics["mc/rows"] == res.n.sum() and metrics["mc/unique_states"] == u
    assert metrics["allocation/ratio_to_fixed_k"] == pytest.approx(res.n.sum() / (9 * u))
    assert metrics["allocation/settled_frac"] == pytest.approx(np.mean(res.stop_rule & (res.n == res.pilot)))
    assert metrics["allocation/calls"] == 2 and metrics["mc/rollouts"] == res.n[uid[est]].sum()


def test_each_group_spends_its_own_budget_from_one_trajectory_cache(setup, monkeypatch):
    """batch_rows = 8 (4 problems x their 2 copies): 2 groups, each one trajectory cache pass for
    both rounds and round(4.5 x its distinct states) rollouts."""
    cached_rows = []
    real_cache = mc.trajectory_cache
    monkeypatch.setattr(mc, "trajectory_cache", lambda params, cfg, tokens, *a, **k: cached_rows.append(
        len(tokens)) or real_cache(params, cfg, tokens, *a, **k))
    states = StepStates.of(setup["starts"], setup["num_steps"])
    res, metrics = allocated_rollouts(make_env(setup, rows=8), setup["ep"], states, setup["rewards"],
                                      jax.random.key(5), ACFG)
    assert cached_rows == [8, 8]
    for g in range(2):
        ids = np.unique(res.uid[8 * g : 8 * g + 8][res.uid[8 * g : 8 * g + 8] >= 0])
        assert res.n[ids].sum() == round(4.5 * len(ids))
    assert metrics["allocation/calls"] == 4 and metrics["mc/unique_states"] == len(res.n)


def test_rewards_that_are_not_0_or_1_are_a_one_line_error(setup):
    half = TASK.__class__(**{**TASK.__dict__, "grade_batch": lambda texts, problems, num_workers=0: np.full(
        len(texts), 0.5, np.float32)})
    states = StepStates.of(setup["starts"], setup["num_steps"])
    with pytest.raises(ConfigError, match=r"^config key 'vineppo.allocation.enabled': .*0/1 rewards; task 'even' "
                                          r"gave 0.5$"):
        allocated_rollouts(make_env(setup, task=half), setup["ep"], states, setup["rewards"], jax.random.key(0), ACFG)


def test_config_builds_the_allocation_and_names_bad_values():
    c = config_lib.base_config()
    assert config_lib.allocation_config(c) is None and type(get_estimator(c)) is MonteCarlo  # off by default
    c.vineppo.allocation.enabled = True
    assert config_lib.allocation_config(c) == ACFG and type(get_estimator(c)) is AllocatedMonteCarlo
    config_lib.validate(c)
    bad = [("vineppo.allocation.pilot", 0, r"'vineppo.allocation.pilot': must be >= 1 \(got 0\)"),
           ("vineppo.allocation.rollouts_per_state", 40.0, r"'vineppo.allocation.rollouts_per_state': must be in"),
           ("vineppo.allocation.prior_settled", (0.6, 0.5), r"'vineppo.allocation.prior_settled': must be two"),
           ("vineppo.adaptive.enabled", True, r"'vineppo.allocation.enabled': allocation and vineppo.adaptive"),
           ("vineppo.states", "lines", r"'vineppo.states' is 'lines': not one of steps, tokens nor an import path"),
           ("vineppo.state_interval", 0, r"'vineppo.state_interval': must be >= 1"),
           ("vineppo.max_states", -1, r"'vineppo.max_states': must be >= 0")]
    for key, value, message in bad:
        changed = copy.deepcopy(c)
        *path, name = key.split(".")
        functools.reduce(lambda node, k: node[k], path, changed)[name] = value
        with pytest.raises(ConfigError, match=f"^config key {message}"):
            config_lib.validate(changed)
