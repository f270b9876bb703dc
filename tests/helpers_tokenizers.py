"""Tiny trained tokenizers (no downloads) of the two families used by the paper's models.

* `byte_level_bpe(texts)`: GPT-2 style byte-level BPE (DeepSeekMath, Qwen): every byte is a
  printable symbol, newlines are ordinary symbols ("Ċ") that merge with each other.
* `sentencepiece_bpe(texts)`: Llama-2 style (RhoMath-1.1B, TinyLlama): Metaspace pre-tokenizer
  (a word-start space is glued to the word as "▁", a "▁" is prepended to the text), BPE with byte
  fallback (characters outside the vocab, e.g. "\\n" when the training text has none, become
  <0xHH> tokens), and the Llama-2 decoder (▁ → space, bytes fused, one leading space stripped).

Both return a `transformers.PreTrainedTokenizerFast` with <s> (BOS), </s> (EOS) and <unk>.
"""
from __future__ import annotations

import json

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIALS = ("<unk>", "<s>", "</s>")


def _wrap(core):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def byte_level_bpe(texts, vocab_size: int = 400):
    """Byte-level BPE trained on `texts`."""
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(texts, trainer)
    return _wrap(core)


def sentencepiece_bpe(texts, vocab_size: int = 200):
    """Llama-2 style BPE with byte fallback trained on `texts` (ids 3..258 are <0x00>..<0xFF>)."""
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    core.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS)))
    spec = json.loads(core.to_str())
    learned = sorted(spec["model"]["vocab"].items(), key=lambda item: item[1])
    names = list(SPECIALS) + [f"<0x{b:02X}>" for b in range(256)]
    names += [name for name, _ in learned if name not in SPECIALS]
    spec["model"]["vocab"] = {name: i for i, name in enumerate(names)}
    spec["model"]["byte_fallback"] = True
    spec["added_tokens"] = [
        {"id": i, "content": name, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, name in enumerate(SPECIALS)
    ]
    core = Tokenizer.from_str(json.dumps(spec))
    core.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                      decoders.Strip(" ", 1, 0)])
    return _wrap(core)
