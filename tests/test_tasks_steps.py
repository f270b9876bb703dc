"""Step splitting (identical to VinePPO's GSM8K and in-place MATH splitters) and the step -> token-index mapping."""
import gzip
import json
import pathlib
import random

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from vinejax.tasks import StepSplitError, gsm8k
from vinejax.tasks import math as math_task
from vinejax.tasks.char_tokenizer import build_char_tokenizer
from vinejax.tasks.steps import step_token_starts, token_char_offsets, token_step_ids, tokenize_with_step_starts

DATA = pathlib.Path(__file__).parent / "data"
SPLITTERS = {"math": math_task.split_steps, "gsm8k": gsm8k.split_steps}


def _jsonl(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_gsm8k_steps_by_hand():
    # each "\n" starts a step; leading blank lines join the first line; a blank line in the
    # middle is a step; blank lines before "\n#### answer" join the last line with the answer
    text = "\n\nFirst 2+3=5.\nThen 5*2=10.\n\nSo 10.\n\n#### 10\n"
    assert gsm8k.split_steps(text) == ["\n\nFirst 2+3=5.", "\nThen 5*2=10.", "\n", "\nSo 10.\n\n#### 10\n"]
    assert gsm8k.split_steps("") == []
    assert gsm8k.split_steps("\n\n") == ["\n", "\n"]  # the official empty first step is left out
    assert gsm8k.split_steps("#### 3") == ["#### 3"]  # no "\n#### ": an ordinary line
    assert gsm8k.split_steps("So 3. #### 3\nok") == ["So 3. #### 3", "\nok"]
    assert gsm8k.split_steps("a\r\nb") == ["a\r", "\nb"]  # only "\n" separates steps
    assert gsm8k.split_steps("a\n#### 3\nmore\n") == ["a\n#### 3\nmore\n"]  # all after "####" joins
    with pytest.raises(StepSplitError, match="occurs 2 times"):
        gsm8k.split_steps("a\n#### 3\nb\n#### 4")


def test_math_steps_by_hand():
    # Masked: "\nWe have M Then M.\n\nSo the answer is\nMHence the final sum is M.\n" (M = one
    # 60-character math block). Stage 2 cuts at the sentence end before "\n\nSo" and at newlines;
    # short pieces absorb the next one. Stage 3 cuts after "$x = 2.$" (it ends with ".$") and
    # " Then $y = 3$." (14 characters, no ".$" ending) absorbs the next part. Stage 4 cuts at
    # the newlines inside "\[..\]".
    text = ("\nWe have $x = 2.$ Then $y = 3$.\n\nSo the answer is\n\\[\nx + y = 5.\n\\]"
            "Hence the final sum is $\\boxed{5}$.\n")
    assert math_task.split_steps(text) == [
        "\nWe have $x = 2.$", " Then $y = 3$.\n\nSo the answer is\n\\[", "\nx + y = 5.",
        "\n\\]Hence the final sum is $\\boxed{5}$.\n"]
    # a long sentence breaks at the comma nearest its middle that leaves >= 40 characters each side
    text = ("\nWe add the numbers one by one, then we multiply them, and then we divide the result "
            "by two to get the final answer which is $\\boxed{7}$.\n")
    assert math_task.split_steps(text) == [text[:text.index(" and then")], text[text.index(" and then"):]]
    # "e.g." and a two-letter word before "." end no sentence; "apples." does
    text = "\nWe take e.g. Three apples. So it is. Then we eat them all up.\n"
    assert math_task.split_steps(text) == ["\nWe take e.g. Three apples.", " So it is. Then we eat them all up.\n"]
    assert math_task.split_steps("") == []
    with pytest.raises(StepSplitError, match="too short"):
        math_task.split_steps("\nThe answer is 5.\n")  # < 20 characters, no ".$"-like ending
    assert math_task.split_steps("\nThe answer is $5.$\n") == ["\nThe answer is $5.$\n"]
    with pytest.raises(StepSplitError, match="nested"):  # inline math inside an align block
        math_task.split_steps("\nWe get \\begin{align*} x &= $y$ \\\\ z &= 2\\end{align*} here.\n")


@pytest.mark.parametrize("name", ["math", "gsm8k"])
def test_steps_equal_official_reference_rows(name):
    rows = _jsonl(DATA / f"official_steps_{name}.jsonl")
    assert len(rows) > 60
    for row in rows:
        if row["steps"] is None:
            with pytest.raises(StepSplitError):
                SPLITTERS[name](row["text"])
        else:  # vinejax leaves out the official empty first step of an all-blank GSM8K response
            assert SPLITTERS[name](row["text"]) == [s for s in row["steps"] if s], (row["source"], row["case"])


def _sft_texts(shared_data, name, split="train"):
    """The SFT response format "\\n" + solution + "\\n" (GSM8K without calculator annotations)."""
    if name == "math":
        return ["\n" + r["solution"] + "\n" for r in _jsonl(shared_data / "math" / f"{split}.jsonl")]
    return ["\n" + gsm8k.strip_calculator(r["answer"]) + "\n" for r in _jsonl(shared_data / "gsm8k" / f"{split}.jsonl")]


@pytest.mark.data
@pytest.mark.parametrize("name, target", [("math", 0.97), ("gsm8k", 0.99)])
def test_agreement_with_official_steps_on_the_full_train_set(shared_data, name, target):
    texts = _sft_texts(shared_data, name)
    with gzip.open(DATA / f"official_step_lengths_{name}_train.txt.gz", "rt", encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    assert len(lines) == len(texts)
    same = 0
    for text, line in zip(texts, lines):
        expected = None if line == "error" else [int(n) for n in line.split() if n != "0"]
        assert expected is None or sum(expected) == len(text), "the reference was made from other data"
        try:
            ours = [len(step) for step in SPLITTERS[name](text)]
        except StepSplitError:
            ours = None
        same += ours == expected
    # measured: MATH 12000/12000, GSM8K 7473/7473
    assert same / len(texts) >= target


@pytest.mark.data
def test_steps_concatenate_back_to_real_and_truncated_responses(shared_data):
    rng = random.Random(0)
    for name, split in (("math", "test"), ("gsm8k", "test"), ("math", "train")):
        for text in _sft_texts(shared_data, name, split)[:3000]:
            for response in (text, text[:rng.randrange(len(text))]):  # a cut-off response too
                try:
                    steps = SPLITTERS[name](response)
                except StepSplitError:
                    assert len(response) < 20  # only short cut-off texts fail on this data
                    continue
                assert "".join(steps) == response and all(steps)
                assert all(step.startswith("\n") for step in steps[1:] if name == "gsm8k")


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
