"""A tiny character-level tokenizer saved as a Hugging Face tokenizer folder.

Every character is one token (``tokenizers`` WordLevel model over single characters, so offsets
come for free); special tokens ``<pad>`` (id 0), ``<bos>``, ``<eos>``, ``<unk>``. Encoding with
``add_special_tokens=True`` prepends ``<bos>`` (like Llama); ``<eos>`` is never added
automatically. ``AutoTokenizer.from_pretrained(folder)`` loads the saved folder.
"""
from __future__ import annotations

import os

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
DEFAULT_CHARACTERS = "\n" + "".join(chr(c) for c in range(32, 127))  # newline + printable ASCII


def build_char_tokenizer(characters: str = DEFAULT_CHARACTERS):
    """A ``transformers.PreTrainedTokenizerFast`` with one token per character of ``characters``."""
    from transformers import PreTrainedTokenizerFast

    unique = list(dict.fromkeys(characters))
    if any(len(c) != 1 for c in unique):
        raise ValueError("characters must be single characters")
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for char in unique:
        vocab.setdefault(char, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS,
                                   pad_token=PAD, unk_token=UNK)


def save_char_tokenizer(folder: str | os.PathLike, characters: str = DEFAULT_CHARACTERS) -> str:
    """Build the tokenizer and save it as a Hugging Face folder; returns the folder path."""
    folder = os.fspath(folder)
    build_char_tokenizer(characters).save_pretrained(folder)
    return folder
