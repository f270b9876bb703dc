"""Step splitting (GSM8K lines, MATH LaTeX-aware) and the step -> token-index mapping."""
import json
import statistics

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from vinejax.tasks import gsm8k, math as math_task
from vinejax.tasks.char_tokenizer import build_char_tokenizer
from vinejax.tasks.steps import step_token_starts, token_char_offsets, token_step_ids, tokenize_with_step_starts


def test_gsm8k_steps_by_hand():
    text = "\n\nFirst 2+3=5.\nThen 5*2=10.\n\nSo 10.\n#### 10"
    assert gsm8k.split_steps(text) == ["\n\nFirst 2+3=5.\n", "Then 5*2=10.\n\n", "So 10.\n#### 10"]
    assert gsm8k.split_steps("") == []
    assert gsm8k.split_steps("#### 3") == ["#### 3"]
    assert gsm8k.split_steps("a\r\nb") == ["a\r\n", "b"]  # only "\n" separates steps


def test_math_steps_by_hand():
    text = ("We have shown that $x = 2.$ Then $y = 3$.\n\nSo the answer is\n\\[\nx + y = 5.\n\\]"
            "Hence the final sum is $\\boxed{5}$.")
    steps = math_task.split_steps(text)
    assert "".join(steps) == text
    # a part shorter than 20 characters that does not end a sentence merges into the next one ...
    assert math_task.split_steps("So we get\nthe value 3.") == ["So we get\nthe value 3."]
    assert math_task.split_steps("We have $x = 2.$ Then y is 3.") == ["We have $x = 2.$", " Then y is 3."]
    # ... but not into display math
    assert math_task.split_steps("Then\n\\[x = 2.\\]") == ["Then", "\n\\[x = 2.\\]"]
    assert [s.strip() for s in steps] == [
        "We have shown that $x = 2.$", "Then $y = 3$.", "So the answer is\n\\[", "x + y = 5.",
        "\\]Hence the final sum is $\\boxed{5}$."]
    # never cut inside inline math, even at a newline or a sentence end
    inline = "Consider the long inline formula $a = 1.\nB = 2$ which we keep whole here."
    assert all("$a" not in s or "2$" in s for s in math_task.split_steps(inline))


def _jsonl(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest.mark.data
def test_reconstruction_and_counts_on_real_solutions(shared_data):
    gsm = [p.solution for p in gsm8k.load_split("test", data_dir=str(shared_data))]
    math = [r["solution"] for r in _jsonl(shared_data / "math" / "test.jsonl")]
    for texts, splitter in ((gsm, gsm8k.split_steps), (math, math_task.split_steps)):
        counts = []
        for text in texts:
            steps = splitter(text)
            assert "".join(steps) == text
            assert all(steps)
            counts.append(len(steps))
        assert 2 <= statistics.median(counts) <= 12
        assert max(counts) < 120
    # every GSM8K gold step but the last is exactly one line; the last ends with "#### answer"
    for text in gsm[:200]:
        steps = gsm8k.split_steps(text)
        assert len(steps) == text.count("\n")
        assert "####" in steps[-1]


@pytest.mark.data
def test_math_steps_close_to_vineppo_gold_steps(shared_data):
    records = _jsonl(shared_data / "vineppo_splits" / "math_test.jsonl")
    def squash(steps):
        return [" ".join(step.split()) for step in steps]  # VinePPO's steps drop/merge whitespace

    exact = sum(squash(math_task.split_steps(r["solution"])) == squash(r["gold_solution_steps"]) for r in records)
    # measured 313/500 (whitespace-normalised, step for step); guard against regressions
    assert exact >= 300
    same_count = sum(len(math_task.split_steps(r["solution"])) == len(r["gold_solution_steps"]) for r in records)
    assert same_count >= 350


def test_step_token_starts_by_hand():
    steps = ["ab", "cd", "e"]
    # tokens: "a", "bc" (crosses into step 1), "d", "e"
    assert step_token_starts(steps, [(0, 1), (1, 3), (3, 4), (4, 5)]) == [0, 2, 3]
    # step 1 starts inside the token "bcd" and owns no token start: merged away
    assert step_token_starts(steps, [(0, 1), (1, 4), (4, 5)]) == [0, 2]
    assert token_step_ids(steps, [(0, 1), (1, 4), (4, 4), (4, 5)]) == [0, 0, 0, 2]
    # offsets measured in prompt + response coordinates
    assert step_token_starts(steps, [(10, 12), (12, 14), (14, 15)], char_offset=10) == [0, 1, 2]


def _trained_bpe(texts, vocab_size=400):
    core = Tokenizer(models.BPE(unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["[UNK]"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=core)


def _reference_starts(steps, tokens_text):
    """Independent reference: walk the decoded token strings and step boundaries by character count."""
    boundaries, position = set(), 0
    for step in steps[:-1]:
        position += len(step)
        boundaries.add(position)
    # token i starts at char c_i; a new step starts at token i when a boundary b has c_{i-1} < b <= c_i
    char_starts, position = [], 0
    for token in tokens_text:
        char_starts.append(position)
        position += len(token)
    starts = [0] + [i for i in range(1, len(char_starts))
                    if any(char_starts[i - 1] < b <= char_starts[i] for b in boundaries)]
    return starts


def test_token_starts_with_a_trained_bpe_and_the_char_tokenizer():
    texts = ["We have $x = 2.$ Then $y = 3$.\nSo the sum is 5.\n#### 5",
             "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips.\n#### 72"] * 20
    for tokenizer in (_trained_bpe(texts), build_char_tokenizer()):
        for text, splitter in ((texts[0], math_task.split_steps), (texts[1], gsm8k.split_steps)):
            steps = splitter(text)
            ids, starts = tokenize_with_step_starts(tokenizer, text, steps)
            pieces = [tokenizer.decode([i]) for i in ids]
            assert "".join(pieces) == text
            assert starts == _reference_starts(steps, pieces)
            assert starts[0] == 0 and all(a < b for a, b in zip(starts, starts[1:]))
            assert len(starts) <= len(steps)
    char = build_char_tokenizer()
    steps = gsm8k.split_steps(texts[1])
    assert tokenize_with_step_starts(char, texts[1], steps)[1] == [0, len(steps[0])]


def test_offsets_from_sampled_token_ids_match_the_tokenizer_offsets():
    text = "We have $x = 2.$ Then \u00fcn\u00efc\u00f6d\u00e9 \u2713 \u65e5\u672c $y = 3$.\n#### 5"
    bpe = _trained_bpe([text] * 20)
    bytes_only = _trained_bpe(["abc"], vocab_size=257)  # multi-byte characters span several tokens
    for tokenizer, sample in ((bpe, text), (bytes_only, text), (build_char_tokenizer(), "12+7=19\n19*3=57\n#### 57")):
        encoding = tokenizer(sample, add_special_tokens=False, return_offsets_mapping=True)
        assert token_char_offsets(tokenizer, encoding["input_ids"]) == [tuple(o) for o in encoding["offset_mapping"]]
