"""Adaptive K through the integrated values phase (`train.values.adaptive_rollouts`): real tiny
model, real arithmetic episodes and step splitter, one-token continuations graded by a rule whose
success probability per state is known exactly from the model's logits. The integrated loop must
make the decisions of the reference `rl.adaptive.run_rounds` on the outcomes it drew, respect the
total budget, be deterministic under a seed, and give unbiased values."""
import jax
import numpy as np
import pytest

from vinejax import config as config_lib
from vinejax import sampling
from vinejax.model import llama
from vinejax.model.config import ModelConfig
from vinejax.rl import adaptive
from vinejax.sampling import mc
from vinejax.tasks import arithmetic, get_task
from vinejax.tasks.base import Task
from vinejax.tasks.char_tokenizer import build_char_tokenizer
from vinejax.train import encode
from vinejax.train.episodes import Episodes, episode_steps
from vinejax.train.values import StepStates, adaptive_rollouts, next_increment

TOKENIZER = build_char_tokenizer(arithmetic.ALPHABET)
GOOD = set("13579")  # a continuation succeeds when the text then ends in an odd digit
CFG = ModelConfig(vocab_size=len(TOKENIZER), hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                  num_kv_heads=1, head_dim=16, max_position_embeddings=256)
# every token ends the row (EOS set = the whole vocabulary): one token per continuation
SCFG = sampling.SamplingConfig(max_new_tokens=1, temperature=1.0, eos_ids=tuple(range(CFG.vocab_size)))
ACFG = adaptive.AdaptiveConfig()  # tiers (3..12), (9..12), 12


def grade_batch(texts, problems, num_workers=0):
    return np.array([float(t[-1:] in GOOD) for t in texts], np.float32)


TASK = Task(name="even", grade=None, split_steps=None, loader=None, stop_strings=(), grade_batch=grade_batch)


@pytest.fixture(scope="module")
def setup():
    return build_setup()


def build_setup():
    """8 gold arithmetic episodes, each twice (shared prompts and prefixes), their step states,
    random episode rewards, and the exact success probability of every distinct state."""
    problems = arithmetic.load_split("validation", num_problems=8, num_operations=3)
    rows, plen, tlen = [], [], []
    for p in problems:
        prompt = encode.encode_prompt(TOKENIZER, get_task("arithmetic").prompt(p.problem))
        response = encode.encode_text(TOKENIZER, p.solution) + [TOKENIZER.eos_token_id]
        for _ in range(2):
            rows.append(prompt + response)
            plen.append(len(prompt))
            tlen.append(len(prompt) + len(response))
    n = len(rows)
    ep = Episodes(tokens=encode.pad_rows(rows, max(tlen), 0), logprobs=np.zeros((n, max(tlen)), np.float32),
                  prompt_lens=np.array(plen, np.int32), total_lens=np.array(tlen, np.int32),
                  finish_reason=np.full(n, sampling.FINISH_EOS, np.int32),
                  texts=[p.solution for p in problems for _ in range(2)],
                  problems=[p for p in problems for _ in range(2)], problem_index=np.repeat(np.arange(8), 2))
    starts, num_steps = episode_steps(TOKENIZER, arithmetic.split_steps, ep)
    rewards = np.random.RandomState(0).randint(0, 2, n).astype(np.float32)
    params = llama.init_params(CFG, jax.random.key(0), std=0.6)
    uid, rep = sampling.unique_prefixes(ep.tokens, starts, np.arange(starts.shape[1])[None] < num_steps[:, None])
    # exact p(state) = P(next token makes the text end in an even digit), from one forward pass
    logits, _ = jax.jit(llama.forward, static_argnums=1)(params, CFG, ep.tokens)  # causal: [B, T, V]
    p = np.zeros(len(rep))
    for u, (b, s) in enumerate(rep):
        probs = np.asarray(jax.nn.softmax(logits[b, starts[b, s] - 1]))  # next token after the prefix
        resp = ep.tokens[b, ep.prompt_lens[b] : starts[b, s]].tolist()
        ok = [float(TOKENIZER.decode(resp + [v], skip_special_tokens=True)[-1:] in GOOD)
              if v != TOKENIZER.eos_token_id else float(TOKENIZER.decode(resp)[-1:] in GOOD)
              for v in range(CFG.vocab_size)]
        p[u] = probs @ np.array(ok)
    return dict(ep=ep, starts=starts, num_steps=num_steps, rewards=rewards, params=params, uid=uid, p=p)


def run(setup, seed, acfg=ACFG, budget=0.0, rows=0):
    env = sampling.RolloutEnv(setup["params"], CFG, SCFG, context_size=200, chunk_rows=32, tokenizer=TOKENIZER,
                              task=TASK, grade_workers=0, group_rows=rows)
    states = StepStates.of(setup["starts"], setup["num_steps"])
    return adaptive_rollouts(env, setup["ep"], states, setup["rewards"], jax.random.key(seed), acfg, budget)


def test_states_span_settled_and_uncertain(setup):
    p = setup["p"]
    assert len(p) >= 20 and (p < 0.02).any() and (p > 0.8).any() and ((p > 0.2) & (p < 0.8)).sum() >= 3


def test_integrated_loop_makes_the_reference_decisions(setup):
    res, metrics = run(setup, 1)
    np.testing.assert_array_equal(res.uid, setup["uid"])
    drawn = res.outcomes >= 0
    np.testing.assert_array_equal(drawn.sum(1), res.n)  # outcomes recorded in drawing order
    np.testing.assert_array_equal(np.where(drawn, res.outcomes, 0).sum(1), res.s)
    ref = adaptive.run_rounds(np.maximum(res.outcomes, 0), ACFG,
                              tier=lambda n, s: adaptive.evidence_tiers(res.uid, setup["rewards"], n, s))
    np.testing.assert_array_equal(res.n, ref.n)
    np.testing.assert_array_equal(res.tier, ref.tier)
    np.testing.assert_array_equal(res.s, ref.s)
    est = setup["uid"] >= 0
    np.testing.assert_allclose(res.values[est], ref.value[res.uid[est]])
    assert np.all(res.values[~est] == 0)
    assert set(np.unique(res.tier)) <= {0, 1, 2} and len(np.unique(res.n)) > 1  # both early stops and full runs
    # rounds that cannot stop in between are drawn in one call: at most 4 calls for rounds 3/6/9/12
    assert res.calls <= 4 and ref.rounds >= res.calls
    assert metrics["mc/rows"] == res.n.sum() and metrics["adaptive/rollouts_per_state"] == res.n.mean()


def test_total_budget_is_respected(setup):
    u = len(setup["p"])
    for budget in (3.0, 4.0, 5.5):
        res, metrics = run(setup, 2, budget=budget)
        assert 3 * u <= res.n.sum() <= int(np.ceil(budget * u))
        assert np.all(res.n % 3 == 0) and np.all(np.isfinite(res.values))
        assert res.calls >= 1 and metrics["mc/rows"] == res.n.sum()
    assert run(setup, 2, budget=3.0)[0].n.tolist() == [3] * u  # only the first round fits


def test_deterministic_under_a_seed(setup):
    a, b, c = run(setup, 5)[0], run(setup, 5)[0], run(setup, 6)[0]
    np.testing.assert_array_equal(a.outcomes, b.outcomes)
    np.testing.assert_array_equal(a.values, b.values)
    assert not np.array_equal(a.outcomes, c.outcomes)


def test_fixed_rule_draws_k_from_every_state_in_one_call(setup):
    res, _ = run(setup, 3, acfg=adaptive.AdaptiveConfig(rules=(adaptive.fixed_rule(9),)))
    assert res.calls == 1 and np.all(res.n == 9) and np.all(res.tier == 0)
    np.testing.assert_allclose(res.values[res.uid >= 0], (res.s / 9.0)[res.uid[res.uid >= 0]], rtol=1e-6)


def test_next_increment_skips_only_rounds_without_a_decision():
    rules = ACFG.rules
    n = np.array([3, 3, 3, 6, 9, 9])
    tier = np.array([0, 1, 2, 0, 1, 0])
    assert next_increment(n, rules, tier, one_round=False).tolist() == [3, 6, 9, 3, 3, 3]
    assert next_increment(n, rules, tier, one_round=True).tolist() == [3] * 6


@pytest.mark.slow
def test_values_are_unbiased_end_to_end(setup):
    """Mean V̂ over seeds matches the exact p of every state (the plain mean s/n of the same runs,
    which ignores the optional stopping, is biased toward the stop values)."""
    p, seeds = setup["p"], 60
    vals, plain = [], []
    for seed in range(seeds):
        res, _ = run(setup, 100 + seed)
        rep = np.array([np.argmax(res.uid.ravel() == u) for u in range(len(p))])
        vals.append(res.values.ravel()[rep])
        plain.append(res.s / res.n)
    vals, plain = np.array(vals), np.array(plain)
    se = vals.std(0) / np.sqrt(seeds) + 1e-3
    assert np.all(np.abs(vals.mean(0) - p) < 5 * se)
    err = (vals - p).mean(1)  # per seed, over states
    assert abs(err.mean()) < 4 * err.std() / np.sqrt(seeds)


def test_config_builds_the_rules_and_names_bad_values():
    c = config_lib.base_config()
    assert config_lib.adaptive_config(c) is None  # off by default: the paper's fixed K
    c.vineppo.adaptive.enabled = True
    assert config_lib.adaptive_config(c) == ACFG
    c.vineppo.adaptive.evidence = False
    assert config_lib.adaptive_config(c).rules == ACFG.rules[:1]
    config_lib.validate(c)
    c.vineppo.adaptive.max_rollouts = (12, 12, 10)
    with pytest.raises(config_lib.ConfigError, match="vineppo.adaptive.*max_rollouts must be a positive multiple"):
        config_lib.validate(c)


def test_episode_groups_run_their_rounds_alone(setup, monkeypatch):
    """trajectory_rows = 4 (2 problems x their 2 copies): one group's trajectory cache at a time,
    the same distinct states as one pass, and each group's decisions those of the reference on
    the outcomes it drew, with tiers from its own episodes."""
    cached_rows = []
    real_cache = mc.trajectory_cache
    monkeypatch.setattr(mc, "trajectory_cache",
                        lambda params, cfg, tokens, *a, **k: cached_rows.append(len(tokens)) or real_cache(
                            params, cfg, tokens, *a, **k))
    res, metrics = run(setup, 1, rows=4)
    assert cached_rows == [4] * 4  # 16 episodes in 4 groups, never all at once
    est = setup["uid"] >= 0
    np.testing.assert_array_equal(res.uid >= 0, est)
    assert len(res.n) == len(setup["p"]) == len(set(zip(res.uid[est], setup["uid"][est])))  # same partition
    for g in range(4):
        rows = slice(4 * g, 4 * g + 4)
        ids = np.unique(res.uid[rows][res.uid[rows] >= 0])
        assert np.array_equal(ids, np.arange(ids[0], ids[-1] + 1))  # a group's states are contiguous ids
        local = np.where(res.uid[rows] >= 0, res.uid[rows] - ids[0], -1)
        ref = adaptive.run_rounds(np.maximum(res.outcomes[ids], 0), ACFG,
                                  tier=lambda n, s: adaptive.evidence_tiers(local, setup["rewards"][rows], n, s))
        np.testing.assert_array_equal(res.n[ids], ref.n)
        np.testing.assert_array_equal(res.tier[ids], ref.tier)
        np.testing.assert_allclose(res.values[rows][local >= 0], ref.value[local[local >= 0]])
    assert metrics["mc/rows"] == res.n.sum() and metrics["mc/unique_states"] == len(res.n)
