"""The glue between sampler, task and RL numerics: step columns of real episodes, and MC rewards
assembled from prefix + continuation text."""
import jax
import numpy as np

from vinejax import sampling
from vinejax.tasks import arithmetic, get_task
from vinejax.tasks.char_tokenizer import build_char_tokenizer
from vinejax.train import encode, values
from vinejax.train.episodes import Episodes, episode_steps, sampling_config

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
    scfg = sampling_config(TOKENIZER, TASK, 1.0, 1.0, 40)
    rewards, mask, _ = values.mc_rewards(None, None, TOKENIZER, TASK, ep, starts, num_steps, jax.random.key(0),
                                         scfg, k, cap=-1, chunk_rows=64, workers=0)
    assert rewards.shape == mask.shape == (3, starts.shape[1], k)
    for r in range(3):
        assert mask[r, :num_steps[r]].all() and not mask[r, num_steps[r]:].any()
        for j in range(num_steps[r]):
            np.testing.assert_array_equal(rewards[r, j], [1.0, 0.0, 0.0, 0.0])
            # each state's budget is what is left of the episode's max_new_tokens
            assert seen[(r, j)] == 40 - (starts[r, j] - ep.prompt_lens[r])
