"""The glue between sampler, task and RL numerics: step columns of real episodes, and MC rewards
assembled from prefix + continuation text."""
import types

import jax
import numpy as np

from vinejax import sampling
from vinejax.tasks import arithmetic, get_task
from vinejax.tasks.char_tokenizer import build_char_tokenizer
from vinejax.train import encode, rollout
from vinejax.train.episodes import Episodes


def make_ctx(k=4):
    cfg = types.SimpleNamespace(
        vineppo=types.SimpleNamespace(num_rollouts=k, max_estimated_states=-1, chunk_rows=64),
        sampling=types.SimpleNamespace(max_new_tokens=40, temperature=1.0, top_p=1.0, top_k=0),
        task=types.SimpleNamespace(grade_workers=0),
    )
    ctx = types.SimpleNamespace(cfg=cfg, tokenizer=build_char_tokenizer(arithmetic.ALPHABET),
                                task=get_task("arithmetic"), model_cfg=None)
    ctx.mesh_context = lambda: __import__("contextlib").nullcontext()
    return ctx


def gold_episodes(ctx, n=3) -> Episodes:
    problems = arithmetic.load_split("validation", num_problems=n, num_operations=3)
    rows, plen, tlen = [], [], []
    for p in problems:
        prompt = encode.encode_prompt(ctx.tokenizer, ctx.task.prompt(p.problem))
        response = encode.encode_text(ctx.tokenizer, p.solution) + [ctx.tokenizer.eos_token_id]
        rows.append(prompt + response)
        plen.append(len(prompt))
        tlen.append(len(prompt) + len(response))
    width = max(tlen)
    return Episodes(tokens=encode.pad_rows(rows, width, 0), logprobs=np.zeros((n, width), np.float32),
                    prompt_lens=np.array(plen, np.int32), total_lens=np.array(tlen, np.int32),
                    finish_reason=np.full(n, sampling.FINISH_EOS, np.int32),
                    texts=[p.solution for p in problems], answers=[p.answer for p in problems],
                    problem_index=np.arange(n, dtype=np.int32)), problems


def test_step_columns_are_the_newlines_that_start_each_step():
    ctx = make_ctx()
    ep, problems = gold_episodes(ctx)
    starts, num_steps = rollout.episode_steps(ctx, ep)
    for r, p in enumerate(problems):
        lines = p.solution.split("\n")  # 3 operation lines, then "#### answer" (merged into the last)
        expected, col = [ep.prompt_lens[r]], ep.prompt_lens[r] + len(lines[0])
        for line in lines[1:3]:
            expected.append(col)  # the step starts at the newline before its line (VinePPO)
            col += 1 + len(line)  # one token per character
        assert num_steps[r] == 3
        assert starts[r, :3].tolist() == expected
        # the step really starts at that column: the decoded text from there is "\n" + the line
        step = ctx.tokenizer.decode(ep.tokens[r, expected[1]:expected[1] + 1 + len(lines[1])])
        assert step == "\n" + lines[1]


def test_mc_rewards_grade_prefix_plus_continuation(monkeypatch):
    k = 4
    ctx = make_ctx(k)
    ep, problems = gold_episodes(ctx)
    starts, num_steps = rollout.episode_steps(ctx, ep)
    wrong = encode.encode_text(ctx.tokenizer, "#### 99999") + [ctx.tokenizer.eos_token_id]
    seen = {}

    def fake_continue(params, cfg, tokens, lengths, positions, rng, scfg, num, *, state_mask, budgets,
                      max_rows_per_chunk):
        b, s = positions.shape
        n = scfg.max_new_tokens
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
        return sampling.ContinuationOutput(out_tok, np.zeros(out_tok.shape, np.float32), out_len, finish, {})

    monkeypatch.setattr(sampling, "continue_from_prefixes", fake_continue)
    rewards, mask, _ = rollout.mc_rewards(ctx, None, ep, starts, num_steps, jax.random.key(0))
    assert rewards.shape == mask.shape == (3, starts.shape[1], k)
    for r in range(3):
        assert mask[r, :num_steps[r]].all() and not mask[r, num_steps[r]:].any()
        for j in range(num_steps[r]):
            np.testing.assert_array_equal(rewards[r, j], [1.0, 0.0, 0.0, 0.0])
            # each state's budget is what is left of the episode's max_new_tokens
            assert seen[(r, j)] == 40 - (starts[r, j] - ep.prompt_lens[r])
