"""Tests of vinejax.sampling: HF greedy parity, sampling distribution, log-probs, stopping,
MC continuations from the trajectory cache, mesh execution and compile counts."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers_hf, helpers_jax
from vinejax import sharding
from vinejax.model import llama
from vinejax.model.config import ModelConfig
from vinejax.sampling import (
    FINISH_EOS,
    FINISH_LENGTH,
    FINISH_NONE,
    FINISH_REASONS,
    FINISH_STOP,
    RolloutEnv,
    SamplingConfig,
    Trajectories,
    assemble_rows,
    continue_from_prefixes,
    generate,
    trajectory_cache,
)

CFG = ModelConfig(
    vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8
)


@pytest.fixture(scope="module")
def params():
    return llama.init_params(CFG, jax.random.key(0), std=0.4)


def _prompts(b=3, p=7, seed=0, lens=(7, 4, 2)):
    rs = np.random.RandomState(seed)
    toks = rs.randint(3, CFG.vocab_size, (b, p)).astype(np.int32)
    lens = np.asarray(lens, np.int32)
    toks[np.arange(p)[None] >= lens[:, None]] = 0
    return toks, lens


# ----------------------------------------------------------------------------- HF parity


GREEDY_NEW = 24  # new tokens: with prompts of 2..7 tokens, far past the windows of helpers_hf.WINDOW


def _hf_prompts():
    toks, lens = _prompts(lens=(7, 4, 2))
    toks = np.where(toks > 0, toks % helpers_hf.VOCAB, 0).clip(3)
    toks[np.arange(7)[None] >= lens[:, None]] = 0
    return toks, lens


@pytest.mark.parametrize("variant", ["llama_gqa", "qwen2_tied", *sorted(helpers_hf.FAMILY_VARIANTS)])
def test_greedy_matches_transformers(variant):
    """Token-identical to transformers' greedy `generate` for every family, sliding windows
    (shorter than prompt + response) and soft-capping included."""
    import torch

    from vinejax.model.hf import load_hf_model

    path = helpers_hf.cached_tiny(variant)
    hf = helpers_hf.load_torch(path)
    hf.generation_config.eos_token_id = None  # run every row to its length, as `generate` below
    cfg, params = load_hf_model(path)
    toks, lens = _hf_prompts()
    scfg = SamplingConfig(max_new_tokens=GREEDY_NEW, greedy=True, temperature=0.0)
    out = generate(RolloutEnv(params, cfg, scfg), toks, lens, jax.random.key(0))
    for b in range(3):  # HF row by row (no padding): the reference
        ids = torch.tensor(toks[b : b + 1, : lens[b]], dtype=torch.long)
        with torch.no_grad():
            ref = hf.generate(ids, max_new_tokens=GREEDY_NEW, do_sample=False, pad_token_id=0)
        np.testing.assert_array_equal(np.asarray(out.tokens[b]), ref[0, lens[b] :].numpy())
    np.testing.assert_array_equal(out.lengths, GREEDY_NEW)
    np.testing.assert_array_equal(out.finish_reason, FINISH_LENGTH)


@pytest.mark.parametrize("variant", ["gemma2", "gemma3"])
def test_windowed_continuations_from_the_trajectory_cache(variant):
    """MC continuations that start from a trajectory's cache past the window (both decode
    paths: the scanned `forward_cached` step and the unrolled one) reproduce the greedy
    trajectory, which `test_greedy_matches_transformers` checks against transformers."""
    from vinejax.model.hf import load_hf_model

    cfg, params = load_hf_model(helpers_hf.cached_tiny(variant))
    assert 0 < cfg.sliding_window < 2 + GREEDY_NEW // 2
    toks, lens = _hf_prompts()
    scfg = SamplingConfig(max_new_tokens=GREEDY_NEW, greedy=True, temperature=0.0)
    rows, _, plen, tlen = assemble_rows(toks, lens, generate(RolloutEnv(params, cfg, scfg), toks, lens, jax.random.key(0)))
    rows, plen = np.asarray(rows), np.asarray(plen)
    pos = plen[:, None] + np.array([[1, 9, 14]])  # states 1, 9 and 14 tokens into each response
    n = GREEDY_NEW - 14
    for unroll in (True, False):
        env = RolloutEnv(params, cfg, scfg.replace(max_new_tokens=n, unroll_layers=unroll))
        out = continue_from_prefixes(env, rows, tlen, pos, jax.random.key(1), 1)
        for b in range(3):
            for s in range(3):
                np.testing.assert_array_equal(out.tokens[b, s, 0], rows[b, pos[b, s] : pos[b, s] + n])


# ----------------------------------------------------------------------------- distribution


def _reference_dist(logits, t, top_k, top_p):
    """numpy softmax(logits / t) after top-k then top-p filtering (independent re-implementation)."""
    z = logits.astype(np.float64) / t
    order = np.argsort(-z)
    keep = np.zeros_like(z, bool)
    keep[order[:top_k] if top_k else order] = True
    p = np.where(keep, np.exp(z - z.max()), 0.0)
    p /= p.sum()
    cum = 0.0
    kept = np.zeros_like(keep)
    for i in order:
        if not keep[i] or cum >= top_p:
            break
        kept[i] = True
        cum += p[i]
    p = np.where(kept, p, 0.0)
    return p / p.sum()


def _chi2(counts, p):
    n = counts.sum()
    support = p > 0
    assert counts[~support].sum() == 0, "sampled a filtered-out token"
    e = n * p[support]
    stat = ((counts[support] - e) ** 2 / e).sum()
    df = support.sum() - 1
    return stat, df


@pytest.mark.parametrize("t,top_k,top_p", [(0.7, 0, 1.0), (1.0, 0, 0.8), (0.8, 20, 0.9)])
def test_first_token_distribution(params, t, top_k, top_p):
    toks, lens = _prompts(b=1, p=5, lens=(5,))
    scfg = SamplingConfig(max_new_tokens=1, temperature=t, top_k=top_k, top_p=top_p)
    n = 8192
    out = generate(RolloutEnv(params, CFG, scfg), toks, lens, jax.random.key(1), num_samples=n)
    counts = np.bincount(np.asarray(out.tokens[:, 0]), minlength=CFG.vocab_size)
    logits = np.asarray(llama.forward(params, CFG, jnp.asarray(toks))[0][0, lens[0] - 1])
    stat, df = _chi2(counts, _reference_dist(logits, t, top_k, top_p))
    bound = df + 6 * np.sqrt(2 * df)  # ~6 sigma of the chi-square null
    assert stat < bound, (stat, df)
    # The same bound rejects a wrong temperature.
    p_wrong = _reference_dist(logits, t * 1.5, top_k, top_p)
    wrong = ((counts - n * p_wrong) ** 2 / np.maximum(n * p_wrong, 1e-9))[p_wrong > 0].sum()
    assert wrong > bound, (wrong, bound)


# ----------------------------------------------------------------------------- log-probs


def test_logprobs_match_separate_forward(params):
    toks, lens = _prompts(b=4, p=7, lens=(7, 5, 3, 1))
    scfg = SamplingConfig(max_new_tokens=10, temperature=0.7, top_p=0.9, eos_ids=(5,))
    out = generate(RolloutEnv(params, CFG, scfg), toks, lens, jax.random.key(3))
    rows, lp, plen, tlen = assemble_rows(toks, lens, out)
    logits = llama.forward(params, CFG, rows)[0]
    ref = jax.nn.log_softmax(logits / 0.7, axis=-1)
    ref = np.asarray(jnp.take_along_axis(ref[:, :-1], rows[:, 1:, None], axis=-1)[..., 0])
    col = np.arange(rows.shape[1] - 1)[None] + 1
    resp = (col >= np.asarray(plen)[:, None]) & (col < np.asarray(tlen)[:, None])
    np.testing.assert_allclose(np.asarray(lp)[:, 1:][resp], ref[resp], atol=2e-5)
    assert np.all(np.asarray(lp)[:, 1:][~resp] == 0)
    # rows: prompt then response contiguous, then padding
    for b in range(4):
        np.testing.assert_array_equal(rows[b, : lens[b]], toks[b, : lens[b]])
        np.testing.assert_array_equal(rows[b, lens[b] : tlen[b]], out.tokens[b, : out.lengths[b]])
        assert np.all(np.asarray(rows[b, tlen[b] :]) == 0)


# ----------------------------------------------------------------------------- stopping


def test_eos_stop_sequences_and_length(params):
    toks, lens = _prompts(b=4, p=7, lens=(7, 4, 2, 6))
    base = SamplingConfig(max_new_tokens=12, greedy=True)
    free = np.asarray(generate(RolloutEnv(params, CFG, base), toks, lens, jax.random.key(0)).tokens)
    eos = (int(free[0, 3]),)
    stop = ((int(free[1, 4]), int(free[1, 5])),)
    scfg = base.replace(eos_ids=eos, stop_sequences=stop)
    out = generate(RolloutEnv(params, CFG, scfg), toks, lens, jax.random.key(0), max_new=np.array([12, 12, 12, 2]))
    budget = [12, 12, 12, 2]
    for b in range(4):  # reference: scan the unstopped greedy output
        exp_len, exp_fin = budget[b], FINISH_LENGTH
        for i in range(budget[b]):
            if free[b, i] in eos:
                exp_len, exp_fin = i + 1, FINISH_EOS
                break
            if i >= 1 and (free[b, i - 1], free[b, i]) == stop[0]:
                exp_len, exp_fin = i + 1, FINISH_STOP
                break
        assert int(out.lengths[b]) == exp_len and int(out.finish_reason[b]) == exp_fin, (b, FINISH_REASONS[int(out.finish_reason[b])])
        np.testing.assert_array_equal(out.tokens[b, :exp_len], free[b, :exp_len])
        assert np.all(np.asarray(out.tokens[b, exp_len:]) == 0)
        assert np.all(np.asarray(out.logprobs[b, exp_len:]) == 0)
    assert int(out.finish_reason[0]) == FINISH_EOS and int(out.lengths[0]) <= 4
    assert int(out.finish_reason[1]) in (FINISH_EOS, FINISH_STOP) and int(out.lengths[1]) <= 6
    assert int(out.finish_reason[3]) == FINISH_LENGTH and FINISH_REASONS[FINISH_LENGTH] == "length"


# ----------------------------------------------------------------------------- MC continuations


def _trajectories(params, n_new=10):
    toks, lens = _prompts(b=4, p=7, lens=(7, 4, 7, 2))
    toks[2] = toks[0]  # rows 0 and 2 share the prompt: their state 0 is deduplicated
    scfg = SamplingConfig(max_new_tokens=n_new, temperature=1.0, eos_ids=(7,))
    out = generate(RolloutEnv(params, CFG, scfg), toks, lens, jax.random.key(4))
    rows, _, plen, tlen = assemble_rows(toks, lens, out)
    plen, tlen = np.asarray(plen), np.asarray(tlen)
    frac = np.array([0.0, 0.3, 0.6, 1.0])
    pos = (plen[:, None] + np.round(frac[None] * (tlen - plen)[:, None])).astype(np.int32)
    return np.asarray(rows), tlen, pos


def test_continuations_greedy_equal_generate_from_prefix(params):
    rows, tlen, pos = _trajectories(params)
    mask = np.ones(pos.shape, bool)
    mask[3, 2] = False
    scfg = SamplingConfig(max_new_tokens=8, greedy=True, eos_ids=(7,))
    budgets = np.full(pos.shape, 8)
    budgets[1] = 3
    out = continue_from_prefixes(RolloutEnv(params, CFG, scfg, chunk_rows=8), rows, tlen, pos, jax.random.key(5), 2,
                                 state_mask=mask, budgets=budgets)
    assert out.tokens.shape == (4, 4, 2, 8) and out.lengths.shape == (4, 4, 2)
    assert out.stats["unique_states"] < mask.sum()  # the shared prompt was expanded once
    for b in range(4):
        for s in range(4):
            if not mask[b, s]:
                assert np.all(out.lengths[b, s] == 0) and np.all(out.finish_reason[b, s] == FINISH_NONE)
                continue
            p = pos[b, s]
            ref = generate(RolloutEnv(params, CFG, scfg), rows[b : b + 1, :p], [p], jax.random.key(0),
                           max_new=[budgets[b, s]])
            for k in range(2):
                n = int(ref.lengths[0])
                assert out.lengths[b, s, k] == n and out.finish_reason[b, s, k] == int(ref.finish_reason[0])
                np.testing.assert_array_equal(out.tokens[b, s, k], np.asarray(ref.tokens[0]))
                np.testing.assert_allclose(out.logprobs[b, s, k], np.asarray(ref.logprobs[0]), atol=2e-5)
    empty = continue_from_prefixes(RolloutEnv(params, CFG, scfg), rows, tlen, pos, jax.random.key(5), 2,
                                   state_mask=np.zeros(pos.shape, bool))
    assert empty.tokens.shape == (4, 4, 2, 8) and empty.lengths.sum() == 0


def test_continuations_sampled_differ_and_reproducible(params):
    rows, tlen, pos = _trajectories(params)
    scfg = SamplingConfig(max_new_tokens=8, temperature=1.0)
    a = continue_from_prefixes(RolloutEnv(params, CFG, scfg, chunk_rows=8), rows, tlen, pos, jax.random.key(6), 4)
    b = continue_from_prefixes(RolloutEnv(params, CFG, scfg, chunk_rows=64), rows, tlen, pos, jax.random.key(6), 4)
    c = continue_from_prefixes(RolloutEnv(params, CFG, scfg, chunk_rows=8), rows, tlen, pos, jax.random.key(7), 4)
    d = Trajectories(RolloutEnv(params, CFG, scfg, chunk_rows=8), rows, tlen, cache_rows=2).continue_from(
        pos, jax.random.key(6), 4)  # its cache pass in groups of 2
    np.testing.assert_array_equal(a.tokens, b.tokens)  # independent of chunking
    np.testing.assert_array_equal(a.tokens, d.tokens)  # and of the trajectory pass's grouping
    np.testing.assert_allclose(a.logprobs, d.logprobs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=1e-5, atol=1e-5)
    assert not np.array_equal(a.tokens, c.tokens)
    for s in range(4):  # the K continuations of one state differ
        assert len({tuple(x) for x in a.tokens[1, s]}) > 1
    np.testing.assert_array_equal(a.tokens[0, 0], a.tokens[2, 0])  # identical prefixes share samples
    # live-row statistics are consistent
    assert a.stats["live_steps"] == int(a.lengths[np.asarray(pos) > 0].sum()) or a.stats["live_steps"] > 0
    assert 0 < a.stats["live_fraction"] <= 1


# ----------------------------------------------------------------------------- mesh and compiles


@pytest.mark.parametrize("shape", [(2, 1, 4), (1, 4, 2)])  # data x tensor; FSDP (decode weights stay split)
def test_mesh_matches_single_device(params, shape):
    toks, lens = _prompts(b=3, p=7, lens=(7, 4, 2))
    scfg = SamplingConfig(max_new_tokens=8, greedy=True)
    ref = generate(RolloutEnv(params, CFG, scfg), toks, lens, jax.random.key(0))
    rows, tlen, pos = _trajectories(params)
    mc_ref = continue_from_prefixes(RolloutEnv(params, CFG, scfg), rows, tlen, pos, jax.random.key(1), 2)
    mesh = sharding.make_mesh(shape)
    shard = sharding.tree_shardings(llama.param_logical_axes(CFG), llama.param_shapes(CFG), mesh)
    sparams = jax.device_put(params, shard)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
        out = generate(RolloutEnv(sparams, CFG, scfg), toks, lens, jax.random.key(0))
        mc = continue_from_prefixes(RolloutEnv(sparams, CFG, scfg), rows, tlen, pos, jax.random.key(1), 2)
        # 3 prompts x 3 samples through 2 refilled slots (one per data-parallel device)
        refill = generate(RolloutEnv(sparams, CFG, scfg, decode_rows=2), toks, lens, jax.random.key(0), num_samples=3)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_array_equal(out.lengths, ref.lengths)
    np.testing.assert_array_equal(mc.tokens, mc_ref.tokens)
    np.testing.assert_array_equal(np.asarray(refill.tokens)[::3], ref.tokens)  # sample 0 of each prompt (greedy)


def test_one_compile_per_bucket(params):
    scfg = SamplingConfig(max_new_tokens=4, temperature=0.9, top_k=7)
    t1, l1 = _prompts(b=5, p=10, lens=(10, 3, 5, 9, 1))
    t2, l2 = _prompts(b=7, p=12, lens=(12, 3, 5, 9, 1, 2, 11))
    with helpers_jax.count_compiles() as compiles:
        generate(RolloutEnv(params, CFG, scfg), t1, l1, jax.random.key(0))
        generate(RolloutEnv(params, CFG, scfg), t2, l2, jax.random.key(1))
    assert sum(n for name, n in compiles.items() if "generate" in name) == 1, compiles


def test_scan_and_unrolled_decode_agree(params):
    toks, lens = _prompts(b=3, p=7, lens=(7, 4, 2))
    scfg = SamplingConfig(max_new_tokens=6, temperature=0.9, eos_ids=(5,))
    a = generate(RolloutEnv(params, CFG, scfg), toks, lens, jax.random.key(8))
    b = generate(RolloutEnv(params, CFG, scfg.replace(unroll_layers=False)), toks, lens, jax.random.key(8))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)


def test_trajectory_cache_in_row_groups_equals_one_pass(params):
    rows, tlen, _ = _trajectories(params)
    whole = trajectory_cache(params, CFG, rows[:3], tlen[:3])
    grouped = trajectory_cache(params, CFG, rows[:3], tlen[:3], max_rows=1)  # 3 rows -> groups of 1
    assert grouped.cache.k.shape[1] >= 3 and grouped.hidden.shape[0] == grouped.cache.k.shape[1]
    np.testing.assert_array_equal(np.asarray(grouped.cache.lengths[:3]), tlen[:3])
    for a, b in ((whole.cache.k, grouped.cache.k), (whole.cache.v, grouped.cache.v)):
        np.testing.assert_allclose(np.asarray(a[:, :3]), np.asarray(b[:, :3]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(whole.hidden[:3]), np.asarray(grouped.hidden[:3]), atol=1e-5)
