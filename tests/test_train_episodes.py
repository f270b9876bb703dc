"""The glue between sampler, task and RL numerics: step columns of real episodes, and MC rewards
assembled from prefix + continuation text."""
import jax
import numpy as np
import pytest

from vinejax import config as config_lib
from vinejax import sampling
from vinejax.errors import ConfigError
from vinejax.rl import advantages
from vinejax.tasks import arithmetic, get_task
from vinejax.tasks.base import StepSplitError
from vinejax.tasks.char_tokenizer import build_char_tokenizer
from vinejax.train import encode, host_work, values
from vinejax.train.episodes import Episodes, episode_steps, sampling_config
from vinejax.train.states import StateRule, cap_states, episode_states

TOKENIZER = build_char_tokenizer(arithmetic.ALPHABET)
TASK = get_task("arithmetic")


def gold_episodes(n=3) -> Episodes:
    problems = arithmetic.load_split("validation", num_problems=n, num_operations=3)
    rows, plen, tlen = [], [], []
    for p in problems:
        prompt = encode.encode_prompt(TOKENIZER, TASK.prompt(p.problem))
        response = encode.encode_text(TOKENIZER, p.solution) + [TOKENIZER.eos_token_id]
        rows.append(prompt + response)
        plen.append(len(prompt))
        tlen.append(len(prompt) + len(response))
    width = max(tlen)
    return Episodes(tokens=encode.pad_rows(rows, width, 0), logprobs=np.zeros((n, width), np.float32),
                    prompt_lens=np.array(plen, np.int32), total_lens=np.array(tlen, np.int32),
                    finish_reason=np.full(n, sampling.FINISH_EOS, np.int32),
                    texts=[p.solution for p in problems], problems=list(problems),
                    problem_index=np.arange(n, dtype=np.int32)), problems


def test_step_columns_are_the_newlines_that_start_each_step():
    ep, problems = gold_episodes()
    starts, num_steps = episode_steps(TOKENIZER, TASK.split_steps, ep)
    for r, p in enumerate(problems):
        lines = p.solution.split("\n")  # 3 operation lines, then "#### answer" (merged into the last)
        expected, col = [ep.prompt_lens[r]], ep.prompt_lens[r] + len(lines[0])
        for line in lines[1:3]:
            expected.append(col)  # the step starts at the newline before its line (VinePPO)
            col += 1 + len(line)  # one token per character
        assert num_steps[r] == 3
        assert starts[r, :3].tolist() == expected
        # the step really starts at that column: the decoded text from there is "\n" + the line
        step = TOKENIZER.decode(ep.tokens[r, expected[1]:expected[1] + 1 + len(lines[1])])
        assert step == "\n" + lines[1]


def test_mc_rewards_grade_prefix_plus_continuation(monkeypatch):
    k = 4
    ep, problems = gold_episodes()
    starts, num_steps = episode_steps(TOKENIZER, TASK.split_steps, ep)
    wrong = encode.encode_text(TOKENIZER, "#### 99999") + [TOKENIZER.eos_token_id]
    seen = {}

    def fake_continue(env, tokens, lengths, positions, rng, num, *, state_mask, budgets, ids=None):
        b, s = positions.shape
        n = env.scfg.max_new_tokens
        out_tok = np.zeros((b, s, num, n), np.int32)
        out_len = np.zeros((b, s, num), np.int32)
        finish = np.zeros((b, s, num), np.int32)
        for i in range(b):
            for j in range(s):
                if not state_mask[i, j]:
                    continue
                seen[(i, j)] = int(budgets[i, j])
                rest = tokens[i, positions[i, j]:lengths[i]].tolist()  # the gold remainder (+ EOS)
                for c in range(num):
                    cont = rest if c % 2 == 0 else wrong
                    out_tok[i, j, c, :len(cont)] = cont
                    out_len[i, j, c] = len(cont)
                    finish[i, j, c] = sampling.FINISH_EOS
                finish[i, j, num - 2] = sampling.FINISH_LENGTH  # a correct text cut off: reward 0
        stats = dict(unique_states=int(state_mask.sum()), rows=int(state_mask.sum()) * num, chunks=1, slots=8,
                     slot_steps=1, live_steps=1)
        return sampling.ContinuationOutput(out_tok, np.zeros(out_tok.shape, np.float32), out_len, finish, stats)

    monkeypatch.setattr(sampling.Trajectories, "continue_from",  # what the MC loop calls, model-free here
                        lambda self, positions, rng, num, *, state_mask=None, budgets=None: fake_continue(
                            self.env, self.tokens, self.lengths, positions, rng, num, state_mask=state_mask,
                            budgets=budgets, ids=self.ids))
    scfg = sampling_config(TOKENIZER, 1.0, 1.0, 40)
    context = 60
    env = sampling.RolloutEnv(None, None, scfg, context_size=context, chunk_rows=64, tokenizer=TOKENIZER, task=TASK,
                              grade_workers=0)
    rewards, mask, _ = values.mc_rewards(env, ep, values.StepStates.of(starts, num_steps), jax.random.key(0), k)
    assert rewards.shape == mask.shape == (3, starts.shape[1], k)
    for r in range(3):
        assert mask[r, :num_steps[r]].all() and not mask[r, num_steps[r]:].any()
        for j in range(num_steps[r]):
            np.testing.assert_array_equal(rewards[r, j], [1.0, 0.0, 0.0, 0.0])
            # the official budget: max_new_tokens, capped by the context left after the prefix
            # (whose length counts BOS), not what is left of the episode's own budget
            assert seen[(r, j)] == min(40, context - (starts[r, j] - 1))
    budgets = list(seen.values())
    assert 40 in budgets and min(budgets) < 40  # both regimes occur


def test_late_state_continuation_gets_the_full_budget_and_matches_generate():
    """A state late in a length-stopped episode: its MC continuation may write max_new_tokens (not
    what is left of the episode), and with greedy decoding it is exactly what `generate` writes
    from the same prefix with the same budget (the cache-reusing path is unbiased)."""
    from vinejax.model import llama
    from vinejax.model.config import ModelConfig
    from vinejax.tasks.base import Task

    cfg = ModelConfig(vocab_size=len(TOKENIZER), hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                      num_kv_heads=1, head_dim=16, max_position_embeddings=128,
                      bos_token_id=TOKENIZER.bos_token_id, eos_token_id=TOKENIZER.eos_token_id)
    params = llama.init_params(cfg, jax.random.key(1), std=0.3)
    max_new, episode_len, late = 24, 18, 10
    left = episode_len - late  # what the episode's own budget leaves the late state
    greedy = sampling.SamplingConfig(max_new_tokens=max_new, greedy=True, eos_ids=(), pad_id=0)
    prompt = encode.encode_prompt(TOKENIZER, "12+7\n")
    env = sampling.RolloutEnv(params, cfg, greedy, context_size=100, chunk_rows=8, grade_workers=0)
    full = sampling.generate(env, np.array([prompt]), np.array([len(prompt)]), jax.random.key(0))
    episode = prompt + np.asarray(full.tokens[0, :episode_len]).tolist()  # an episode cut by length
    prefix = episode[: len(prompt) + late]
    cont = np.asarray(sampling.generate(env, np.array([prefix]), np.array([len(prefix)]), jax.random.key(0)).tokens[0])
    cont = cont.tolist()
    # EOS := a token whose first occurrence lies beyond what the episode's budget leaves
    eos = next(t for j, t in enumerate(cont) if j >= left and t not in cont[:j])
    scfg = greedy.replace(eos_ids=(eos,))
    task = Task(name="finish", grade=None, split_steps=None, loader=None, stop_strings=(),
                grade_batch=lambda texts, answers, num_workers=0: np.ones(len(texts), np.float32))
    problem = arithmetic.load_split("validation", num_problems=1)[0]
    ep = Episodes(tokens=np.array([episode], np.int32), logprobs=np.zeros((1, len(episode)), np.float32),
                  prompt_lens=np.array([len(prompt)], np.int32), total_lens=np.array([len(episode)], np.int32),
                  finish_reason=np.array([sampling.FINISH_LENGTH], np.int32), texts=[""], problems=[problem],
                  problem_index=np.zeros(1, np.int32))
    starts = np.array([[len(prompt), len(prefix)]], np.int32)
    env = env.replace(scfg=scfg, tokenizer=TOKENIZER, task=task)
    rewards, mask, stats = values.mc_rewards(env, ep, values.StepStates.of(starts, np.array([2], np.int32)),
                                             jax.random.key(2), 2)
    alone = sampling.generate(env, np.array([prefix]), np.array([len(prefix)]), jax.random.key(3))
    finished = float(int(alone.finish_reason[0]) == sampling.FINISH_EOS)
    assert finished == 1.0 and int(alone.lengths[0]) > left  # needs more than the episode's budget leaves
    np.testing.assert_array_equal(rewards[0, 1], [finished, finished])  # unfinished would score 0
    assert stats["mc/unique_states"] == 2  # continued from the trajectory's own cache, no re-prefill


TEXTS = ["Natalia sold 48 clips in April and half as many in May. How many did she sell?",
         "She sold 48/2 = 24 clips in May.\nAltogether 48 + 24 = 72 clips.\n#### 72"] * 20


@pytest.mark.parametrize("family", ["byte_level_bpe", "sentencepiece_bpe"])
def test_a_response_ending_in_the_stop_string_trains_and_grades_as_text_plus_eos(family):
    """The official: vLLM stops on the text "\\n\\n\\nProblem:", removes it and appends EOS."""
    import helpers_tokenizers

    from vinejax.train.episodes import finish_response, stop_table

    tok = getattr(helpers_tokenizers, family)(TEXTS)
    task = get_task("gsm8k")
    body = "She sold 48/2 = 24 clips.\n#### 24"
    ids = encode.encode_text(tok, body + task.stop_strings[0] + " Tom has")  # as sampled, stop inside
    text, kept = finish_response(tok, stop_table(tok, task, len(tok)), ids)
    assert text == body
    assert kept[-1] == tok.eos_token_id and tok.decode(kept[:-1]) == body  # tokens consistent with the text
    plain = encode.encode_text(tok, body)
    assert finish_response(tok, stop_table(tok, task, len(tok)), plain + [tok.eos_token_id]) == (body, plain + [tok.eos_token_id])


@pytest.mark.parametrize("family", ["byte_level_bpe", "sentencepiece_bpe"])
def test_sft_example_tokenizes_prompt_and_target_together(family):
    """No word-start token of its own before the target (SentencePiece adds "▁" to a text encoded
    alone); the target is "\\n{solution}\\n" then EOS, and the mask covers exactly it."""
    import helpers_tokenizers

    tok = getattr(helpers_tokenizers, family)(TEXTS)
    prompt, target = "[MATH_TASK] Problem:\nNatalia sold 48 clips.\n\nSolution:", "\nShe sold 24.\n#### 24\n"
    ids, mask = encode.encode_sft(tok, prompt, target)
    joint = encode.encode_text(tok, prompt + target)
    assert ids[0] == tok.bos_token_id and ids[1:-1] == joint and ids[-1] == tok.eos_token_id
    target_ids = [t for t, m in zip(ids, mask) if m]
    assert tok.decode(target_ids[:-1]) == target and target_ids[-1] == tok.eos_token_id
    alone = encode.encode_text(tok, target)
    if family == "sentencepiece_bpe":
        assert alone != target_ids[:-1]  # the separately encoded target differs (the old behaviour)


def test_mc_in_episode_groups_equals_one_pass():
    """The values phase in groups of episodes (one group's trajectory cache on the devices at a
    time) draws exactly the continuations, hence the rewards, of one pass over all episodes:
    keys come from the episodes' rows, not from the groups."""
    from vinejax.model import llama
    from vinejax.model.config import ModelConfig
    from vinejax.tasks.base import Task

    cfg = ModelConfig(vocab_size=len(TOKENIZER), hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                      num_kv_heads=1, head_dim=16, max_position_embeddings=128,
                      bos_token_id=TOKENIZER.bos_token_id, eos_token_id=TOKENIZER.eos_token_id)
    params = llama.init_params(cfg, jax.random.key(4), std=0.3)
    problems = arithmetic.load_split("validation", num_problems=5)
    prompts = [encode.encode_prompt(TOKENIZER, p.problem + "\n") for p in problems]
    width = max(map(len, prompts)) + 12
    tokens = np.zeros((5, width), np.int32)
    plens, tlens = [], []
    rng = np.random.default_rng(0)
    for i, p in enumerate(prompts):
        n = len(p) + int(rng.integers(4, 12))
        tokens[i, :len(p)] = p
        tokens[i, len(p):n] = rng.integers(4, len(TOKENIZER) - 1, n - len(p))
        plens.append(len(p))
        tlens.append(n)
    ep = Episodes(tokens=tokens, logprobs=np.zeros(tokens.shape, np.float32), prompt_lens=np.array(plens, np.int32),
                  total_lens=np.array(tlens, np.int32), finish_reason=np.full(5, sampling.FINISH_EOS, np.int32),
                  texts=[""] * 5, problems=problems, problem_index=np.arange(5, dtype=np.int32))
    starts = np.stack([np.array(plens), (np.array(plens) + np.array(tlens)) // 2], 1).astype(np.int32)
    task = Task(name="parity", grade=None, split_steps=None, loader=None, stop_strings=(),
                grade_batch=lambda texts, answers, num_workers=0: np.array([len(t) % 2 for t in texts], np.float32))
    scfg = sampling.SamplingConfig(max_new_tokens=8, temperature=1.0, eos_ids=(TOKENIZER.eos_token_id,), pad_id=0)
    env = sampling.RolloutEnv(params, cfg, scfg, context_size=100, chunk_rows=8, tokenizer=TOKENIZER, task=task,
                              grade_workers=0)
    states = values.StepStates.of(starts, np.full(5, 2, np.int32))
    run = lambda rows, host=None: values.mc_rewards(env.replace(group_rows=rows), ep, states, jax.random.key(2), 2,
                                                    host=host)
    whole, mask, stats = run(0)
    grouped, mask_g, stats_g = run(2)  # groups of 2, 2 and 1 episodes
    np.testing.assert_array_equal(grouped, whole)
    np.testing.assert_array_equal(mask_g, mask)
    for overlap in (True, False):  # each group graded on the host thread while the next one decodes
        with host_work.session(overlap) as host:
            np.testing.assert_array_equal(run(2, host)[0], whole)
        assert host.idle_seconds > 0
    assert 0 < whole[mask].mean() < 1  # the rewards are not all alike
    assert stats_g["mc/unique_states"] == stats["mc/unique_states"] == 10 and stats_g["mc/rows"] == 20


def test_token_states_every_n_response_tokens():
    """"tokens" states: the prompt, then every N response tokens (EOS counts), never at the end;
    the task's splitter is not consulted (a text it rejects keeps its states)."""
    ep, _ = gold_episodes()
    reject = lambda text: (_ for _ in ()).throw(StepSplitError("rejected"))  # noqa: E731
    for n in (1, 5, 8, 100):
        starts, counts = episode_states(TOKENIZER, reject, ep, StateRule("tokens", n))
        for r in range(len(counts)):
            p, t = int(ep.prompt_lens[r]), int(ep.total_lens[r])
            assert starts[r, : counts[r]].tolist() == list(range(p, t, n))
    assert episode_states(TOKENIZER, reject, ep, StateRule("steps"))[1].tolist() == [0, 0, 0]  # dropped


def test_state_cap_keeps_the_first_state_of_each_equal_token_span():
    """cap_states against the stated rule written out: response tokens cut into M equal spans
    [j·L/M, (j+1)·L/M), the first state of each span kept; the prompt always."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        b, m = 3, int(rng.integers(1, 6))
        plen = rng.integers(2, 9, b)
        length = rng.integers(1, 40, b)
        counts = np.array([rng.integers(0, min(12, ln) + 1) for ln in length])
        rows = [sorted(rng.choice(np.arange(1, ln), size=max(c - 1, 0), replace=False).tolist()) if c else []
                for c, ln in zip(counts, length)]
        rows = [[0] + r if c else [] for r, c in zip(rows, counts)]
        starts = encode.pad_rows([[p + x for x in r] for p, r in zip(plen, rows)], max(max(counts), 1), 0)
        got, got_n = cap_states(starts, counts, plen, plen + length, m)
        for r in range(b):
            want, spans = [], set()
            for x in rows[r]:
                span = next(j for j in range(m) if x < (j + 1) * length[r] / m)
                if span not in spans:
                    spans.add(span)
                    want.append(plen[r] + x)
            assert got[r, : got_n[r]].tolist() == want and got_n[r] <= m
            assert (got_n[r] == 0) == (counts[r] == 0) and (counts[r] == 0 or got[r, 0] == plen[r])


def test_step_states_capped_and_advantages_spread_between_states():
    """max_states = 3 on 3-step gold solutions ("a+b=c", "\\nc*d=e", "\\ne-f=g\\n#### g"): the
    second step starts in the first third of the response (the long last line holds the rest),
    so the prompt and the third step are kept; token advantages are V(next state) − V(state) on
    every token in between."""
    ep, _ = gold_episodes()
    steps, _ = episode_steps(TOKENIZER, TASK.split_steps, ep)
    starts, counts = episode_states(TOKENIZER, TASK.split_steps, ep, StateRule("steps", max_states=3))
    for r in range(3):
        length = ep.total_lens[r] - ep.prompt_lens[r]
        assert steps[r, 1] - ep.prompt_lens[r] < length / 3 <= steps[r, 2] - ep.prompt_lens[r] < 2 * length / 3
        assert starts[r, : counts[r]].tolist() == [steps[r, 0], steps[r, 2]]
    values = np.array([[0.2, 0.7], [0.5, 0.0], [0.9, 0.4]], np.float32)  # V̂ of the kept states
    rewards = np.array([1.0, 0.0, 1.0], np.float32)
    step_adv = advantages.vine_step_advantages(values, rewards, counts)
    tokens = np.asarray(advantages.steps_to_tokens(step_adv, starts, counts, ep.response_mask))
    for r in range(3):
        v = [*values[r, : counts[r]], rewards[r]]
        bounds = [*starts[r, : counts[r]], ep.total_lens[r]]
        want = np.zeros(ep.tokens.shape[1], np.float32)
        for i in range(counts[r]):
            want[bounds[i] : bounds[i + 1]] = v[i + 1] - v[i]
        np.testing.assert_allclose(tokens[r], want, atol=1e-6)


USER_RULES = '''
import numpy as np


def after_newlines(x):
    """A user's rule: the prompt, then the token after every newline of the response."""
    ep, newline = x.episodes, x.tokenizer.encode("\\n", add_special_tokens=False)[-1]
    rows = [[int(p)] + [c for c in range(int(p) + 1, int(t)) if ep.tokens[b, c - 1] == newline]
            for b, (p, t) in enumerate(zip(ep.prompt_lens, ep.total_lens))]
    starts = np.zeros((len(rows), max(map(len, rows))), np.int64)
    for b, row in enumerate(rows):
        starts[b, : len(row)] = row
    return starts, np.array([len(row) for row in rows])


def shifted(x):
    starts, counts = after_newlines(x)
    return starts + 1, counts


def repeated(x):
    starts, counts = after_newlines(x)
    starts[:, 1] = starts[:, 0]
    return starts, counts


def past_the_end(x):
    starts, counts = after_newlines(x)
    starts[np.arange(len(counts)), counts - 1] = x.episodes.total_lens
    return starts, counts


def flat(x):
    starts, counts = after_newlines(x)
    return starts[0], counts


def nothing(x):
    return None
'''


def test_a_users_state_rule_by_import_path(tmp_path):
    """`vineppo.states = "pkg.module:fn"`: the rule's states (here after every newline), written
    out from the texts, then capped like the built-in rules'; a rule that breaks the contract
    (states not from the prompt's end, repeated, at the end, wrong shapes, no tuple) and a module that
    is not there are one-line ConfigErrors naming the key."""
    (tmp_path / "user_states_rules.py").write_text(USER_RULES)
    ep, problems = gold_episodes()
    rule = StateRule("user_states_rules:after_newlines", import_dir=str(tmp_path))
    starts, counts = episode_states(TOKENIZER, TASK.split_steps, ep, rule)
    for r, p in enumerate(problems):
        text = p.solution  # one character a token
        want = [int(ep.prompt_lens[r])] + [int(ep.prompt_lens[r]) + i + 1 for i, ch in enumerate(text) if ch == "\n"]
        assert starts[r, : counts[r]].tolist() == want and len(want) == text.count("\n") + 1 >= 3
    capped = episode_states(TOKENIZER, TASK.split_steps, ep, rule._replace(max_states=2))
    np.testing.assert_array_equal(capped[0], cap_states(starts, counts, ep.prompt_lens, ep.total_lens, 2)[0])
    bad = {"shifted": "episode 0's states .* must start at the prompt's end",
           "repeated": "episode 0's states .* must start at the prompt's end",
           "past_the_end": "episode 0's states .* must start at the prompt's end",
           "flat": r"it returned starts int64\[\d+\] and counts int64\[3\]; want integer \[3, S\] and \[3\]",
           "nothing": "it must return"}
    for name, message in bad.items():
        with pytest.raises(ConfigError, match=f"^config key 'vineppo.states' is 'user_states_rules:{name}': {message}"):
            episode_states(TOKENIZER, TASK.split_steps, ep, rule._replace(kind=f"user_states_rules:{name}"))
    c = config_lib.base_config()
    c.import_dir = str(tmp_path)
    c.vineppo.states = "user_states_rules:after_newlines"
    config_lib.validate(c)
    c.vineppo.states = "no_such_states_module:rule"
    with pytest.raises(ConfigError, match="^config key 'vineppo.states' is 'no_such_states_module:rule': module"):
        config_lib.validate(c)
