"""Continuous batching (`sampling.refill`) through `continue_from_prefixes` and `generate`: the
same continuations as the chunked schedule whatever the slots, refills per step and queue order;
the same responses whatever the rows decoded at once or the prompts per call; stop-automaton state
reset per refilled row; per-state sample counts; live-slot statistics; fewer slots for the queue's
tail; distinct prefixes; on a mesh each device copies only its own cache rows (no all-gather of
the cache)."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from vinejax import sharding
from vinejax.model import llama
from vinejax.model.config import ModelConfig
from vinejax.sampling import (
    FINISH_EOS,
    FINISH_LENGTH,
    FINISH_NONE,
    FINISH_STOP,
    RolloutEnv,
    SamplingConfig,
    StopTable,
    assemble_rows,
    continue_from_prefixes,
    generate,
    unique_prefixes,
)
from vinejax.sampling.continuation import TrajectoryCache, balanced_rows, refill_program
from vinejax.sampling.core import bucket
from vinejax.sampling.refill import Queue, RefillPlan
from vinejax.sampling.stops import STOPPED

CFG = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8)
EOS = (5, 6, 7, 8)  # ~6% per step: continuation lengths spread over the budget


@pytest.fixture(scope="module")
def params():
    return llama.init_params(CFG, jax.random.key(0), std=0.1)


@pytest.fixture(scope="module")
def traj(params):
    """6 trajectories (rows 0 and 3 share their prompt), 4 states each at 0/30/60/90% of the response."""
    rs = np.random.RandomState(0)
    lens = np.array([6, 4, 8, 6, 3, 5], np.int32)
    toks = rs.randint(9, CFG.vocab_size, (6, 8)).astype(np.int32)
    toks[3] = toks[0]
    toks[np.arange(8)[None] >= lens[:, None]] = 0
    scfg = SamplingConfig(max_new_tokens=16, temperature=1.0, eos_ids=EOS)
    out = generate(RolloutEnv(params, CFG, scfg), toks, lens, jax.random.key(1))
    rows, _, plen, tlen = assemble_rows(toks, lens, out)
    plen, tlen = np.asarray(plen), np.asarray(tlen)
    pos = (plen[:, None] + np.floor(np.array([0.0, 0.3, 0.6, 0.9])[None] * (tlen - plen)[:, None])).astype(np.int32)
    return np.asarray(rows), tlen, pos


def _mc(params, traj, scfg, k, state_mask=None, budgets=None, **env):
    rows, tlen, pos = traj
    return continue_from_prefixes(RolloutEnv(params, CFG, scfg, **env), rows, tlen, pos, jax.random.key(3), k,
                                  state_mask=state_mask, budgets=budgets)


def _same(a, b):
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.lengths, b.lengths)
    np.testing.assert_array_equal(a.finish_reason, b.finish_reason)
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=2e-5)


def test_refill_matches_chunks_for_any_slots_and_refill_rate(params, traj):
    rows, tlen, pos = traj
    mask = np.ones(pos.shape, bool)
    mask[4, 3] = False
    budgets = np.full(pos.shape, 16)
    budgets[1] = 5
    budgets[2, 1] = 1
    scfg = SamplingConfig(max_new_tokens=16, temperature=1.0, eos_ids=EOS)
    kw = dict(state_mask=mask, budgets=budgets)
    ref = _mc(params, traj, scfg, 3, schedule="chunks", chunk_rows=8, **kw)
    fin = set(np.unique(ref.finish_reason[mask]).tolist())
    assert {FINISH_EOS, FINISH_LENGTH} <= fin  # rows end at different steps: refill has work to do
    assert ref.lengths[2, 1].tolist() == [1, 1, 1] and np.all(ref.lengths[1][mask[1]] <= 5)
    for slots, refills in [(8, 1), (8, 8), (16, 2), (128, None)]:
        out = _mc(params, traj, scfg, 3, schedule="refill", chunk_rows=slots, refills_per_step=refills, **kw)
        _same(out, ref)
        assert out.stats["chunks"] == 1 and out.stats["rows"] == ref.stats["rows"]
        assert out.stats["slots"] == min(slots, bucket(ref.stats["rows"]))  # never more slots than (bucketed) rows
        assert np.all(out.lengths[~mask] == 0) and np.all(out.finish_reason[~mask] == FINISH_NONE)


def test_refill_greedy_equals_generate_from_each_prefix(params, traj):
    rows, tlen, pos = traj
    scfg = SamplingConfig(max_new_tokens=10, greedy=True, eos_ids=EOS)
    out = _mc(params, traj, scfg, 1, chunk_rows=8, refills_per_step=2)
    for b in range(len(rows)):
        for s in range(pos.shape[1]):
            p = pos[b, s]
            one = generate(RolloutEnv(params, CFG, scfg), rows[b : b + 1, :p], [p], jax.random.key(0))
            n = int(one.lengths[0])
            assert out.lengths[b, s, 0] == n and out.finish_reason[b, s, 0] == int(one.finish_reason[0])
            np.testing.assert_array_equal(out.tokens[b, s, 0], np.asarray(one.tokens[0]))


def test_stop_automaton_restarts_for_every_refilled_row(params, traj):
    """A table that ends a row after g(first token) tokens (as benchmarks/mc_lengths.py uses):
    each row's length is min(g(its first token), budget), so a slot must not inherit the
    automaton state of the row it held before."""
    g = 1 + np.arange(CFG.vocab_size) % 7  # 1..7 tokens
    table = np.zeros((8, CFG.vocab_size), np.int32)
    table[0] = np.where(g > 1, g - 1, STOPPED)
    for c in range(1, 8):
        table[c] = c - 1 if c > 1 else STOPPED
    stops = StopTable(next_state=table)
    scfg = SamplingConfig(max_new_tokens=6, temperature=1.0)
    out = _mc(params, traj, scfg, 4, chunk_rows=8, refills_per_step=3, stops=stops)
    first = out.tokens[..., 0]
    want = np.minimum(g[first], 6)
    np.testing.assert_array_equal(out.lengths, want)
    np.testing.assert_array_equal(out.finish_reason, np.where(g[first] <= 6, FINISH_STOP, FINISH_LENGTH))
    assert out.stats["rows"] > 8 * 4  # every slot was refilled several times
    _same(out, _mc(params, traj, scfg, 4, schedule="chunks", chunk_rows=8, stops=stops))


def test_per_state_counts_take_the_first_samples_of_fixed_k(params, traj):
    rows, tlen, pos = traj
    scfg = SamplingConfig(max_new_tokens=8, temperature=1.0, eos_ids=EOS)
    counts = np.random.RandomState(2).randint(0, 5, pos.shape)
    counts[0, 0], counts[3, 0] = 2, 3  # one shared prompt, two different counts
    counts[1, 2] = 0
    full = _mc(params, traj, scfg, 4, chunk_rows=8)
    out = _mc(params, traj, scfg, counts, chunk_rows=8)
    assert out.tokens.shape == full.tokens.shape
    for b in range(pos.shape[0]):
        for s in range(pos.shape[1]):
            c = counts[b, s]
            np.testing.assert_array_equal(out.tokens[b, s, :c], full.tokens[b, s, :c])
            np.testing.assert_array_equal(out.lengths[b, s, :c], full.lengths[b, s, :c])
            assert np.all(out.lengths[b, s, c:] == 0) and np.all(out.finish_reason[b, s, c:] == FINISH_NONE)
    # rows decoded: the largest count of each distinct prefix (the shared prompt: 3, not 2 + 3)
    uid, _ = unique_prefixes(rows, pos, counts > 0)
    per_u = np.zeros(uid.max() + 1, int)
    np.maximum.at(per_u, uid[uid >= 0], counts[uid >= 0])
    assert out.stats["rows"] == per_u.sum()
    with pytest.raises(ValueError, match="num_samples"):
        _mc(params, traj, scfg, -counts - 1)


def test_live_fraction_refill_above_chunks_and_consistent(params, traj):
    scfg = SamplingConfig(max_new_tokens=16, temperature=1.0, eos_ids=EOS)
    chunks = _mc(params, traj, scfg, 6, schedule="chunks", chunk_rows=16)
    refill = _mc(params, traj, scfg, 6, chunk_rows=16)
    for out in (chunks, refill):
        st = out.stats
        uid, rep = unique_prefixes(traj[0], traj[2])
        assert st["live_steps"] == int(out.lengths[rep[:, 0], rep[:, 1]].sum())  # distinct rows' tokens
        assert 0 < st["live_fraction"] <= 1 and st["live_fraction"] == st["live_steps"] / st["slot_steps"]
    assert refill.stats["live_fraction"] > chunks.stats["live_fraction"]
    assert refill.stats["slot_steps"] < chunks.stats["slot_steps"]


def test_tail_halvings_cut_dead_slots_not_results(params, traj):
    """Once the queue is empty the loop halves its slots whenever the live rows fit (moved into
    the first half): the same continuations with fewer slot-steps, on one device and on two
    data-parallel devices (each halving its own slots)."""
    scfg = SamplingConfig(max_new_tokens=16, temperature=1.0, eos_ids=EOS)
    ref = _mc(params, traj, scfg, 6, chunk_rows=16, tail_halvings=0)
    slot_steps = [ref.stats["slot_steps"]]
    for h in (1, 2):
        out = _mc(params, traj, scfg, 6, chunk_rows=16, tail_halvings=h)
        _same(out, ref)
        assert out.stats["live_steps"] == ref.stats["live_steps"]
        slot_steps.append(out.stats["slot_steps"])
    assert slot_steps[0] > slot_steps[1] > slot_steps[2], slot_steps
    mesh = sharding.make_mesh((2, 1, 4))
    sparams = jax.device_put(params, sharding.tree_shardings(llama.param_logical_axes(CFG), llama.param_shapes(CFG),
                                                             mesh))
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
        out = _mc(sparams, traj, scfg, 6, chunk_rows=16, tail_halvings=2)
    _same(out, ref)
    assert out.stats["slot_steps"] < slot_steps[0]


def test_unique_prefixes_by_exact_tokens():
    tokens = np.array([[1, 2, 3, 4], [1, 2, 9, 9], [1, 2, 3, 0]])
    pos = np.array([[2, 3], [2, 3], [3, 1]])
    mask = np.array([[True, True], [True, True], [True, False]])
    uid, rep = unique_prefixes(tokens, pos, mask)
    assert uid.tolist() == [[0, 1], [0, 2], [1, -1]]  # [1,2] ×2, [1,2,3] ×2, [1,2,9]
    assert rep.tolist() == [[0, 0], [0, 1], [1, 1]]


def test_generate_does_not_depend_on_rows_at_once_or_prompts_per_call(params, traj):
    """All rows at once, `decode_rows` refilled slots (fewer than the rows), and the prompts split
    over two calls with their ids: the same responses (keys of the prompt's id and the sample)."""
    rows, tlen, _ = traj
    prompts, lens = rows[:, :8], np.array([6, 4, 8, 6, 3, 5], np.int32)
    scfg = SamplingConfig(max_new_tokens=16, temperature=1.0, eos_ids=EOS)
    env = RolloutEnv(params, CFG, scfg)
    whole = generate(env, prompts, lens, jax.random.key(4), num_samples=3)
    assert len(set(np.asarray(whole.lengths).tolist())) > 3  # rows end at different steps: slots get refilled
    for slots, refills in [(4, 1), (8, None)]:
        out = generate(env.replace(decode_rows=slots, refills_per_step=refills), prompts, lens, jax.random.key(4),
                       num_samples=3)
        _same(out, whole)
    halves = [generate(env.replace(decode_rows=4), prompts[sl], lens[sl], jax.random.key(4), num_samples=3,
                       ids=np.arange(6)[sl]) for sl in (slice(0, 2), slice(2, 6))]
    for f in ("tokens", "lengths", "finish_reason"):
        np.testing.assert_array_equal(np.concatenate([np.asarray(getattr(h, f)) for h in halves]),
                                      np.asarray(getattr(whole, f)))


def test_balanced_rows_spread_work_over_devices():
    work = np.array([9.0, 1, 1, 1, 8, 1, 1, 0])
    place = balanced_rows(work, 8, 2)
    assert sorted(place.tolist()) == list(range(8))
    load = [work[place // 4 == d].sum() for d in range(2)]
    assert load == [11.0, 11.0]  # 9 + 1 + 1 + 0 beside 8 + 1 + 1 + 1
    np.testing.assert_array_equal(balanced_rows(work, 8, 1), np.arange(8))  # one device: in order


def test_refill_copies_cache_rows_on_their_own_device():
    """The refill program on 8 devices (FSDP mesh) copies trajectory-cache rows into slots device
    by device: no all-gather of the cache (the chunked program's indexed read does gather it)."""
    cfg = CFG.replace(num_kv_heads=4)
    mesh = sharding.make_mesh((1, 8, 1))
    b, t, n, r = 64, 256, 512, 32
    spec = lambda axes, shape: NamedSharding(mesh, sharding.logical_to_spec(axes, shape, mesh))
    kv_shape = (cfg.num_layers, b, t, cfg.num_kv_heads, cfg.head_dim)
    kv = jax.ShapeDtypeStruct(kv_shape, jnp.float32, sharding=spec(llama.CACHE_AXES, kv_shape))
    hidden = jax.ShapeDtypeStruct((b, t, cfg.hidden_size), jnp.float32,
                                  sharding=spec(("batch", "length", "embed"), (b, t, cfg.hidden_size)))
    lengths = jax.ShapeDtypeStruct((b,), jnp.int32, sharding=spec(("batch",), (b,)))
    whole = NamedSharding(mesh, jax.sharding.PartitionSpec())
    ints = lambda m: jax.ShapeDtypeStruct((m,), jnp.int32, sharding=whole)
    keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), n))
    queue = Queue(ints(n), ints(n), ints(n), jax.ShapeDtypeStruct(keys.shape, keys.dtype, sharding=whole), ints(n),
                  ints(8))
    shardings = sharding.tree_shardings(llama.param_logical_axes(cfg), llama.param_shapes(cfg), mesh)
    params = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), llama.param_shapes(cfg),
                          shardings)
    scfg = SamplingConfig(max_new_tokens=32, temperature=1.0)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
        compiled = refill_program.lower(params, TrajectoryCache(llama.KVCache(kv, kv, lengths), hidden), queue, None,
                                        cfg=cfg, scfg=scfg, plan=RefillPlan(r, 288, 1)).compile()
    gathered = [np.prod([int(d) for d in dims.split(",") if d]) for dims in
                re.findall(r"= \w+\[([\d,]*)\]\S* all-gather", compiled.as_text())]
    shard = np.prod(kv_shape) // 8  # one device's share of the trajectory cache (k or v)
    assert gathered and max(gathered) < shard // 16, gathered  # only weights (FSDP) and per-slot scalars
