"""The §9 value-prediction analysis: statistics against hand computations, bootstrap coverage,
ground-truth rollouts against exact values enumerated from a tiny model's logits, candidate
actions, critic alignment and restore, and the script end to end on a tiny PPO run."""
import dataclasses
import itertools
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vinejax import sampling, sharding
from vinejax.analysis import candidates, stats
from vinejax.analysis import setup as analysis_setup
from vinejax.analysis import value_prediction as vp
from vinejax.checkpoint import Checkpointer
from vinejax.config import base_config, from_dict, paper_config, to_dict
from vinejax.model import llama
from vinejax.model.config import ModelConfig
from vinejax.model.hf import save_hf_model
from vinejax.tasks import arithmetic
from vinejax.tasks.base import Problem, Task
from vinejax.tasks.char_tokenizer import build_char_tokenizer
from vinejax.train.context import RunContext, build_context
from vinejax.train.episodes import Episodes, sampling_config, stop_table
from vinejax.train.iteration import init_state
from vinejax.train.states import StateRule

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))


# ----------------------------------------------------------------------------- statistics


def test_value_metrics_match_hand_computation():
    pred, target = [0.1, 0.5, 0.9, 0.3], [0.0, 0.5, 1.0, 1.0]
    assert stats.mae(pred, target) == pytest.approx((0.1 + 0.0 + 0.1 + 0.7) / 4)
    assert stats.mse(pred, target) == pytest.approx((0.01 + 0.0 + 0.01 + 0.49) / 4)
    # deviations from the means 0.45 / 0.625: sum dx*dy = 0.325, sum dx^2 = 0.35, sum dy^2 = 0.6875
    assert stats.pearson(pred, target) == pytest.approx(0.325 / np.sqrt(0.35 * 0.6875))
    assert np.isnan(stats.pearson([0.4] * 4, target))  # a constant predictor has no correlation


def test_pairwise_counts_ties_as_wrong_and_top1_breaks_ties_at_random():
    target = [0.2, 0.8, 0.8, 0.5]
    # pairs (0,1) (0,2) (0,3) (1,3) ordered right; (1,2) tied in the target; (2,3) tied in the prediction
    assert stats.pairwise_counts([0.1, 0.9, 0.3, 0.3], target) == (4, 6, 5)
    assert stats.pairwise_counts([0.5] * 4, target) == (0, 6, 5)
    assert stats.top1_accuracy([0.1, 0.9, 0.3, 0.3], target) == 1.0  # best by prediction is a best by target
    assert stats.top1_accuracy([0.0, 0.0, 1.0, 0.0], target) == 1.0  # the other best (target tie) is right too
    assert stats.top1_accuracy([1.0, 0.0, 0.0, 0.0], target) == 0.0
    assert stats.top1_accuracy([0.9, 0.9, 0.0, 0.0], target) == 0.5  # a tie for the predicted best: a coin flip
    assert stats.top1_accuracy([0.0] * 4, target) == 0.5  # no preference: 2 of 4 candidates are best

    preds = [[0.1, 0.9, 0.3, 0.3], [1.0, 2.0, 3.0]]
    targets = [target, [0.0, 1.0, 0.5]]  # second state: only (0,1) and (0,2) right -> 2 of 3, none tied
    indices = stats.bootstrap_indices(2, 50, np.random.default_rng(0))
    m = stats.ranking_metrics(preds, targets, indices)
    assert m["pairwise"]["value"] == pytest.approx(6 / 9)  # pooled over pairs, not averaged per state
    assert m["pairwise_untied"]["value"] == pytest.approx(6 / 8)
    assert m["top1"]["value"] == pytest.approx(0.5)
    c = stats.ranking_ceilings(targets)
    assert c["untied_pairs"] == pytest.approx(8 / 9)
    assert c["chance_pairwise"] == pytest.approx(4 / 9)
    assert c["chance_top1"] == pytest.approx((2 / 4 + 1 / 3) / 2)


def test_percentile_interval_by_hand():
    assert stats.percentile_interval(np.arange(101.0)) == pytest.approx((2.5, 97.5))
    assert stats.percentile_interval(np.arange(101.0), confidence=0.9) == pytest.approx((5.0, 95.0))
    with_nan = np.concatenate([np.arange(101.0), [np.nan, np.inf]])  # undefined resamples are left out
    assert stats.percentile_interval(with_nan) == pytest.approx((2.5, 97.5))
    assert np.isnan(stats.percentile_interval([np.nan, np.nan])).all()


def test_bootstrap_interval_covers_the_true_mean_about_95_percent():
    rng = np.random.default_rng(1)
    p, n, reps = 0.3, 60, 200
    covered = 0
    for _ in range(reps):
        x = (rng.random(n) < p).astype(float)
        indices = stats.bootstrap_indices(n, 400, rng)
        assert indices.shape == (400, n) and indices.min() >= 0 and indices.max() < n
        lo, hi = stats.bootstrap_ci(lambda idx: x[idx].mean(), indices)
        covered += lo <= p <= hi
    assert 0.88 <= covered / reps <= 0.99, covered / reps


def test_estimate_reports_undefined_values_as_none():
    indices = stats.bootstrap_indices(5, 20, np.random.default_rng(0))
    m = stats.value_metrics([0.5] * 5, [0.0, 0.2, 0.4, 0.6, 1.0], indices)
    assert m["pearson"] == {"value": None, "ci": [None, None]}
    assert m["mae"]["value"] == pytest.approx(np.mean([0.5, 0.3, 0.1, 0.1, 0.5]))
    lo, hi = m["mae"]["ci"]
    assert lo <= m["mae"]["value"] <= hi


def test_script_takes_the_state_rule_and_names_a_bad_one():
    import analyze_values
    args = analyze_values.parse_args(["--policy", "P", "--states", "tokens", "--state_interval", "11",
                                      "--max_states", "3"])
    fields = {k: v for k, v in vars(args).items() if k in vp.AnalysisConfig.__dataclass_fields__}
    assert vp.AnalysisConfig(**fields | {"mc_ks": (9,)}).state_rule() == StateRule("tokens", 11, 3)
    assert vp.AnalysisConfig().state_rule() == StateRule("steps", 8, 0)  # the paper's step states by default
    # checked before any model is loaded (the policy folder does not exist): one line naming the setting
    for flag, value, message in (("--state_interval", "0", "state_interval=0 must be >= 1"),
                                 ("--max_states", "-1", "max_states=-1 must be >= 0"),
                                 ("--states", "lines", "states=.?lines.? must be steps, tokens or an import path")):
        with pytest.raises(SystemExit, match=f"^error: analysis setting {message}"):
            analyze_values.main(["--policy", "/nonexistent", flag, value])


def test_run_config_round_trips_through_json():
    cfg = paper_config("rho1b", "gsm8k", "ppo")
    back, skipped = from_dict(json.loads(json.dumps(to_dict(cfg))))
    assert to_dict(back) == to_dict(cfg) and isinstance(back.mesh.shape, tuple) and skipped == []
    assert from_dict({"ppo": {"clip_epsilon": 0.2}})[1] == ["ppo.clip_epsilon"]  # an older version's key


# ----------------------------------------------------------------------------- a toy task


def odd_a_count(text: str) -> float:
    """The toy reward, defined on the response text."""
    return float(text.count("a") % 2 == 1)


def numpy_params(cfg: ModelConfig, seed: int, std: float) -> dict:
    """Random params drawn with numpy (no per-shape jax compiles): N(0, std) matrices, unit norms,
    and for a value-head config w ~ N(0, 1/sqrt(D+1)), b = 0.1."""
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree.flatten_with_path(llama.param_shapes(cfg))
    out = []
    for path, leaf in leaves:
        name = jax.tree_util.keystr(path)
        scale = 1 / np.sqrt(cfg.hidden_size + 1) if "value_head" in name else std
        x = np.ones(leaf.shape) if "norm" in name else (np.full(leaf.shape, 0.1) if name.endswith("['b']")
                                                         else rng.normal(0, scale, leaf.shape))
        out.append(x.astype(np.float32))
    return jax.tree.unflatten(treedef, out)


def toy_setup(std: float = 0.1) -> analysis_setup.Setup:
    """A tiny random model over the vocabulary {pad, bos, eos, unk, a, b, newline}, no stop strings,
    rewarding responses with an odd number of 'a'."""
    tok = build_char_tokenizer("ab\n")
    model_cfg = ModelConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2,
                            num_kv_heads=1, head_dim=8, max_position_embeddings=32, bos_token_id=tok.bos_token_id,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    task = Task(name="toy", grade=lambda r, a: odd_a_count(r),
                grade_batch=lambda rs, ans, num_workers=0: np.array([odd_a_count(r) for r in rs], np.float32),
                split_steps=list, loader=lambda split, **kw: [], prompt_template="{problem}", stop_strings=())
    cfg = base_config()
    cfg.vineppo.chunk_rows = 1024
    cfg.sampling.batch_size = 8
    mesh = sharding.make_mesh((1, 1, 1))
    shardings = sharding.tree_shardings(llama.param_logical_axes(model_cfg), llama.param_shapes(model_cfg), mesh)
    ctx = RunContext(cfg, mesh, task, tok, model_cfg, shardings)
    params = ctx.put_params(numpy_params(model_cfg, 4, std))
    return analysis_setup.Setup(ctx, params)


def toy_episodes(tok, responses: list[str], prompt: str = "a") -> Episodes:
    """Episodes whose rows are BOS + prompt + response (characters), right-padded."""
    rows = [[tok.bos_token_id] + tok.encode(prompt + r, add_special_tokens=False) for r in responses]
    width = max(len(r) for r in rows) + 2
    tokens = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = r
    n = len(rows)
    return Episodes(tokens=tokens, logprobs=np.zeros(tokens.shape, np.float32),
                    prompt_lens=np.full(n, 1 + len(prompt), np.int32),
                    total_lens=np.array([len(r) for r in rows], np.int32),
                    finish_reason=np.full(n, sampling.FINISH_EOS, np.int32), texts=list(responses),
                    problems=[Problem(prompt, "", "")] * n, problem_index=np.arange(n, dtype=np.int32))


def exact_values(setup: analysis_setup.Setup, prefixes: list[list[int]], prompt_len: int, max_new: int,
                 temperature: float) -> list[float]:
    """E[reward] of each prefix over every continuation within its budget (the official
    min(max_new, context - prefix), as the MC rollouts have), enumerated: a continuation ends at EOS (graded on its
    text) or uses the budget without EOS (unfinished: reward 0). Next-token distributions come
    from ONE full forward over prefix + every EOS-free tail of budget - 1 tokens (rows right-padded;
    causal masking gives every shorter tail's distribution)."""
    tok, cfg = setup.ctx.tokenizer, setup.ctx.model_cfg
    eos = tok.eos_token_id
    others = [t for t in range(cfg.vocab_size) if t != eos]
    budgets = [min(max_new, setup.ctx.context_size - (len(p) - 1)) for p in prefixes]
    tails = [list(itertools.product(others, repeat=b - 1)) for b in budgets]
    rows = [list(p) + list(t) for p, ts in zip(prefixes, tails) for t in ts]
    width = max(len(row) for row in rows)  # right padding: causal masking keeps earlier positions exact
    rows = [row + [tok.pad_token_id] * (width - len(row)) for row in rows]
    logits, _ = llama.forward(setup.params, cfg, jnp.asarray(rows, jnp.int32))
    probs = np.asarray(jax.nn.softmax(logits / temperature, axis=-1), np.float64)  # [M, L, V]
    values, r = [], 0
    for prefix, budget, ts in zip(prefixes, budgets, tails):
        dist = {}  # EOS-free tail -> next-token distribution after prefix + tail
        for t in ts:
            for j in range(budget):
                dist.setdefault(t[:j], probs[r, len(prefix) - 1 + j])
            r += 1
        value, frontier = 0.0, {(): 1.0}
        for _ in range(budget):
            nxt = {}
            for tail, p_tail in frontier.items():
                d = dist[tail]
                text = tok.decode(list(prefix[prompt_len:]) + list(tail), skip_special_tokens=True)
                value += p_tail * d[eos] * odd_a_count(text)
                nxt.update({tail + (t,): p_tail * d[t] for t in others})
            frontier = nxt  # what is left after the last step ran out of budget: reward 0
        values.append(value)
    return values


def test_ground_truth_rollouts_converge_to_the_enumerated_value():
    setup = toy_setup()
    tok = setup.ctx.tokenizer
    max_new, temperature, k = 4, 0.8, 3000
    ep = toy_episodes(tok, ["", "b", "ab"])
    positions = ep.total_lens.copy()  # each state is its whole row: 0, 1 and 2 response tokens used
    scfg = sampling_config(tok, temperature, 1.0, max_new)
    with setup.ctx.mesh_context():
        env = setup.ctx.rollout(setup.params).replace(scfg=scfg)
        rewards = vp.rollout_rewards(env, ep, positions, k, jax.random.key(0), "gt")
    assert rewards.shape == (3, k) and set(np.unique(rewards)) <= {0.0, 1.0}
    prefixes = [ep.tokens[n, : positions[n]].tolist() for n in range(3)]
    for n, exact in enumerate(exact_values(setup, prefixes, int(ep.prompt_lens[0]), max_new, temperature)):
        assert 0.02 < exact < 0.98  # a non-trivial target
        stderr = np.sqrt(exact * (1 - exact) / k)
        assert abs(rewards[n].mean() - exact) < 4 * stderr, (n, rewards[n].mean(), exact)


# ----------------------------------------------------------------------------- candidates, critic


def test_candidate_actions_are_the_next_step_of_each_continuation():
    tok = build_char_tokenizer(arithmetic.ALPHABET)
    task = Task(name="arithmetic", grade=arithmetic.grade, grade_batch=arithmetic.grade_batch,
                split_steps=arithmetic.split_steps, loader=arithmetic.load_split, prompt_template="{problem}\n",
                stop_strings=("\n\n",))
    ep = toy_episodes(tok, ["12+7=19\n19*3=57", "12+7=19"], prompt="(12+7)*3\n")
    plen = int(ep.prompt_lens[0])
    positions = np.array([plen + len("12+7=19\n19*3=57"), plen + len("12+7=19")])
    conts = [["\n57-5=52\n#### 52\n\n", "\n57-5=51\n#### 51\n\n", "\n57-5=52\n#### 52\n\n"],  # final step, a repeat
             # "5..." extends the state's own step: no boundary at the state, no candidate
             ["\n19*3=57\n57-5=52\n#### 52\n\n", "5\n#### 5\n\n", "\n19*3=47\n47-5=4"]]
    width = 28
    tokens = np.zeros((2, 1, 3, width), np.int32)
    lengths = np.zeros((2, 1, 3), np.int32)
    finish = np.full((2, 1, 3), sampling.FINISH_STOP, np.int32)
    for i, j in itertools.product(range(2), range(3)):
        ids = tok.encode(conts[i][j], add_special_tokens=False)
        tokens[i, 0, j, : len(ids)], lengths[i, 0, j] = ids, len(ids)
    finish[1, 0, 2] = sampling.FINISH_LENGTH
    out = sampling.ContinuationOutput(tokens, np.zeros(tokens.shape, np.float32), lengths, finish, {})
    cand = candidates.continuation_episodes(tok, stop_table(tok, task, len(tok)), ep, positions, out)
    assert cand.texts[0] == "12+7=19\n19*3=57\n57-5=52\n#### 52"  # stop string removed
    cand_pos = np.repeat(positions, 3)
    ends = candidates.next_step_ends(tok, task, cand, cand_pos, max_new_tokens=64)
    actions = [tok.decode(cand.tokens[m, cand_pos[m] : ends[m]].tolist()) if ends[m] >= 0 else None for m in range(6)]
    assert actions == ["\n57-5=52\n#### 52", "\n57-5=51\n#### 51", "\n57-5=52\n#### 52",
                       "\n19*3=57", None, "\n19*3=47"]
    assert candidates.distinct_candidates(cand, cand_pos, ends, 3) == [[0, 1], [3, 5]]
    # an action needs one token of budget left after it
    used = len("12+7=19\n19*3=57")  # response tokens of state 1 plus its action
    assert list(candidates.next_step_ends(tok, task, cand, cand_pos, used + 1)) == [-1, -1, -1, ends[3], -1, ends[5]]
    assert list(candidates.next_step_ends(tok, task, cand, cand_pos, used)) == [-1] * 6
    # states every 5 / 7 tokens: an action is the next 5 / 7 tokens where the state is one of the rule's
    for n, want in ((5, ["\n57-5"] * 3 + [None] * 3), (7, [None] * 3 + ["\n19*3=5", "5\n#### ", "\n19*3=4"])):
        ends = candidates.next_step_ends(tok, task, cand, cand_pos, 64, StateRule("tokens", n))
        assert [tok.decode(cand.tokens[m, cand_pos[m] : ends[m]].tolist()) if ends[m] >= 0 else None
                for m in range(6)] == want
    rows, pos, steps = vp.state_prefixes(tok, task, ep, False, StateRule("tokens", 4))
    assert rows.tolist() == [0, 0, 0, 1] and (pos - plen).tolist() == [4, 8, 12, 4] and steps.tolist() == [1, 2, 3, 1]


def test_critic_value_is_read_after_the_last_prefix_token():
    setup = toy_setup()
    cfg = setup.ctx.model_cfg.replace(value_head=True)
    critic = numpy_params(cfg, 7, 0.1)
    setup = analysis_setup.Setup(dataclasses.replace(setup.ctx, critic_cfg=cfg), setup.params, critic)
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, 7, size=(5, 9)).astype(np.int32)  # tokens after each prefix are junk
    positions = np.array([1, 3, 5, 8, 9])
    with setup.ctx.mesh_context():
        got = vp.critic_prefix_values(setup, tokens, positions)
    # reference: the prefixes alone (what follows is masked out as padding), value after the last token
    prefix_only = (np.arange(tokens.shape[1])[None] < positions[:, None]).astype(np.int32)
    _, hidden = llama.forward(critic, cfg, jnp.asarray(tokens), segment_ids=jnp.asarray(prefix_only))
    want = np.asarray(llama.value_head(critic, hidden))[np.arange(5), positions - 1]
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.ptp(got) > 1e-3  # distinct values: a misaligned column would not match


# ----------------------------------------------------------------------------- a tiny PPO run


def reward_odd_length(responses, answers, num_workers=0):
    """A reward a random model earns about half the time."""
    return np.array([float(len(r) % 2 == 1) for r in responses], np.float32)


def character_steps(text):
    """Every character is a step: a random model's episodes have many states and candidates."""
    return list(text)


@pytest.fixture(scope="module")
def tiny_ppo_run(tmp_path_factory):
    """A PPO run dir as the loop leaves it (config.json, checkpoints/, hf/) with a random policy
    and a random critic; returns the dir and the checkpointed critic."""
    run = str(tmp_path_factory.mktemp("run") / "ppo")
    tok = build_char_tokenizer(arithmetic.ALPHABET)
    model_cfg = ModelConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                            num_kv_heads=1, head_dim=16, max_position_embeddings=64, bos_token_id=tok.bos_token_id,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    hf = save_hf_model(numpy_params(model_cfg, 3, 0.02), model_cfg, os.path.join(run, "hf"), tokenizer=tok)
    c = base_config()
    c.algo, c.seed, c.output_dir = "ppo", 3, run
    c.task.options.num_operations = 2
    c.task.num_eval_problems, c.task.max_prompt_tokens = 8, 32
    c.sampling.max_new_tokens, c.sampling.batch_size, c.sampling.temperature, c.sampling.top_p = 12, 8, 1.0, 1.0
    c.vineppo.chunk_rows = 64
    c.mesh.shape = (1, 1, 1)
    with open(os.path.join(run, "config.json"), "w") as f:
        json.dump(to_dict(c), f)
    c.model.hf_path = str(hf)
    ctx, params, _ = build_context(c)
    critic = jax.device_put(numpy_params(ctx.critic_cfg, 5, 0.02), ctx.critic_shardings)
    with ctx.mesh_context():
        state = init_state(ctx, params).replace(critic=critic)
        ckpt = Checkpointer(os.path.join(run, "checkpoints"))
        ckpt.save(2, state, {"iteration": 2})
        ckpt.close()
    return run, jax.device_get(critic)


def test_restore_critic_returns_the_checkpointed_critic(tiny_ppo_run):
    run, saved = tiny_ppo_run
    setup = analysis_setup.load_setup(run, ppo_run=run)
    assert setup.sources["critic_step"] == 2
    restored = jax.device_get(setup.critic)
    assert jax.tree.structure(restored) == jax.tree.structure(saved)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(saved)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="not both"):
        analysis_setup.load_setup(run, ppo_run=run, config=run)
    with pytest.raises(ValueError, match="holds no run config"):
        analysis_setup.load_setup(os.path.join(run, "hf"))
    with pytest.raises(FileNotFoundError, match="neither a run dir"):
        analysis_setup.policy_folder(os.path.join(run, "checkpoints"))


def test_script_end_to_end_writes_report_and_figures(tiny_ppo_run, tmp_path, capsys, monkeypatch):
    import analyze_values

    monkeypatch.setattr(arithmetic, "grade_batch", reward_odd_length)  # read when the task is built
    monkeypatch.setattr(arithmetic, "split_steps", character_steps)
    run, _ = tiny_ppo_run
    out = tmp_path / "analysis"
    analyze_values.main(["--policy", run, "--ppo_run", run, "--out", str(out), "--num_problems", "8",
                         "--num_states", "12", "--gt_rollouts", "16", "--mc_ks", "1,3", "--ranking_states", "4",
                         "--bootstrap", "50"])
    assert "12 states (steps) | critic MAE" in capsys.readouterr().out
    for name in ("value_analysis.json", "value_scatter.png", "ranking_accuracy.png"):
        assert (out / name).stat().st_size > 0
    report = json.loads((out / "value_analysis.json").read_text())
    values = report["values"]
    assert values["num_states"] == 12 and set(values["estimators"]) == {"critic", "mc_k1", "mc_k3", "constant"}
    states = report["states"]
    assert all(round(v * 16) == v * 16 for v in states["gt"])  # means of 16 rewards in {0, 1}
    assert all(v in (0.0, 1.0) for v in states["mc_k1"])
    for name, m in values["estimators"].items():
        assert m["mae"]["value"] == pytest.approx(stats.mae(states[name], states["gt"]), abs=1e-5)
        lo, hi = m["mae"]["ci"]
        assert lo <= m["mae"]["value"] <= hi
    rk = report["ranking"]
    assert rk["num_states"] >= 1, rk
    assert set(rk["estimators"]) == {"critic", "mc_k1", "mc_k3", "random"}
    for state in report["ranked_states"]:
        actions = [tuple(a) for a in state["candidate_tokens"]]
        assert len(set(actions)) == len(actions) >= 3
        assert all(len(c) <= 1 for c in state["candidates"])  # one character = one step (special tokens join it)
    units = 12 + sum(len(s["gt"]) for s in report["ranked_states"])  # states and (state, action) pairs
    assert report["cost"]["gt_rollouts"] == 16 * units and report["cost"]["rollouts"] == (16 + 3) * units
