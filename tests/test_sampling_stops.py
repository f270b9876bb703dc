"""Stop strings matched on generated text (`vinejax.sampling.stops`), for a byte-level BPE and a
Llama-2 style SentencePiece tokenizer (Metaspace, byte fallback).

The reference everywhere is the tokenizer's own `decode`: a row must stop at the first token j
such that the stop string occurs in decode(ids[:j + 1]), and nowhere else.
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers_tokenizers
from vinejax.model import llama
from vinejax.model.config import ModelConfig
from vinejax.sampling import (
    FINISH_LENGTH,
    FINISH_STOP,
    RolloutEnv,
    SamplingConfig,
    StopTable,
    cut_at_stop,
    generate,
    stop_automaton,
    token_bytes,
    token_sequence_table,
)

STOP = "\n\n\nProblem:"
SP_TEXTS = ["The answer is 5. Problem: find x. (Problem:7) is odd. x := 3; Problem:= done (Problem:)",
            "Let x = 2 and y = 3. So x + y = 5. Solution: 5. Pro blem em: Pro:"] * 50
BL_TEXTS = [t.replace(". ", ".\n\n\n") for t in SP_TEXTS] + ["a \n\n\nProblem:= b", "x.\n\n\nProblem:)"] * 30
UNICODE = "Sei ü = 日本 \u2713. "


@pytest.fixture(scope="module")
def toks():
    return {"sentencepiece": helpers_tokenizers.sentencepiece_bpe(SP_TEXTS, vocab_size=220),
            "byte_level": helpers_tokenizers.byte_level_bpe(BL_TEXTS, vocab_size=320)}


def ids_of(tok, pieces):
    ids = tok.convert_tokens_to_ids(list(pieces))
    missing = [p for p, i in zip(pieces, ids) if i is None or i == tok.unk_token_id]
    assert not missing, f"test tokenizer lacks pieces {missing} (the tokenizers library trained differently)"
    return ids


def text_stop_index(tok, ids, stops=(STOP,)):
    """Reference: first j with a stop string in decode(ids[:j+1]) (None if never)."""
    for j in range(len(ids)):
        text = tok.decode(ids[: j + 1], skip_special_tokens=True)
        if any(s in text for s in stops):
            return j
    return None


def table_stop_index(table, ids):
    """What the decode loop does: one state per row, one gather per token."""
    state = 0
    for j, t in enumerate(ids):
        state = int(table.next_state[state, t])
        if state < 0:
            return j
    return None


# pieces written as the tokenizer spells them; expected: index of the token that completes STOP
SP_CASES = [
    (["▁5.", "<0x0A>", "<0x0A>", "<0x0A>", "Pro", "blem:"], 5),  # what a Llama-2 model writes
    (["▁x", "<0x0A>", "<0x0A>", "<0x0A>", "Pr", "o", "bl", "em:", "▁find"], 7),  # split 4 ways
    (["<0x0A>", "<0x0A>", "<0x0A>", "Pro", "bl", "em", ":=", "▁x"], 6),  # ":=" holds the end + more
    (["<0x0A>", "<0x0A>", "<0x0A>", "P", "r", "o", "b", "l", "e", "m", ":"], 10),  # one char each
    (["▁x", "<0x0A>", "<0x0A>", "<0x0A>", "<0x0A>", "Pro", "blem:"], 6),  # more newlines still end with it
    (["▁x", "<0x0A>", "<0x0A>", "Pro", "blem:"], None),  # only two newlines
    (["▁x", "<0x0A>", "<0x0A>", "<0x0A>", "▁Problem:"], None),  # "\n\n\n Problem:" (a space)
    (["<0x0A>", "<0x0A>", "<0x0A>", "Pro", "bl", "em", "▁x"], None),  # no colon
    (["<0x0A>", "<0x0A>", "<0x0A>", "<0xC3>", "<0xBC>", "Pro", "blem:"], None),  # "ü" in between
]
BL_CASES = [
    (["Ġ5", ".", "ĊĊ", "Ċ", "Problem", ":"], 5),  # the tokenizer's own spelling
    (["Ġ5", ".", "Ċ", "ĊĊ", "Problem", ":"], 5),  # another split of the newlines
    (["Ġx", "Ċ", "Ċ", "Ċ", "Pr", "o", "bl", "em", ":)"], 8),  # ":)" holds the end + more
    (["Ġb", "ĠĊĊ", "Ċ", "Pro", "blem", ":="], 5),  # starts inside "ĠĊĊ" (after its space)
    (["ĊĊ", "ĊĊ", "Problem", ":"], 3),
    (["Ġx", "ĠĊĊ", "Problem", ":"], None),  # two newlines only
    (["ĊĊ", "Ċ", "ĠProblem", ":"], None),  # a space before Problem
    (["ĊĊ", "Ċ", "Problem", "Ġ:="], None),
]

EACH_TOKENIZER = pytest.mark.parametrize("name,cases", [("sentencepiece", SP_CASES), ("byte_level", BL_CASES)])


@EACH_TOKENIZER
def test_automaton_stops_exactly_where_the_text_first_contains_the_stop(toks, name, cases):
    tok = toks[name]
    table = stop_automaton(tok, [STOP])
    for pieces, expected in cases:
        ids = ids_of(tok, pieces)
        assert text_stop_index(tok, ids) == expected, pieces  # the case itself is right
        assert table_stop_index(table, ids) == expected, pieces
    # random near-misses against the decode reference: a case with one token replaced or not,
    # between random pieces
    pool = ids_of(tok, sorted({p for pieces, _ in cases for p in pieces}))
    rs = np.random.RandomState(0)
    hits = 0
    for _ in range(400):
        ids = ids_of(tok, cases[rs.randint(len(cases))][0])
        if rs.rand() < 0.5:
            ids[rs.randint(len(ids))] = pool[rs.randint(len(pool))]
        ids = list(rs.choice(pool, rs.randint(4))) + ids + list(rs.choice(pool, rs.randint(4)))
        if "\ufffd" in tok.decode(ids):
            continue  # invalid UTF-8 (a lone <0xBC>): HF's byte-fallback decoder garbles its neighbours
        expected = text_stop_index(tok, ids)
        hits += expected is not None
        assert table_stop_index(table, ids) == expected, tok.convert_ids_to_tokens(ids)
    assert 40 < hits < 350


def test_old_token_id_matching_misses_what_sentencepiece_generates(toks):
    """The stop string encoded on its own starts with the dummy-prefix '▁', which generated text
    does not contain there: the token-id automaton never fires, the text automaton does."""
    tok = toks["sentencepiece"]
    encoded = tok.encode(STOP, add_special_tokens=False)
    assert tok.convert_ids_to_tokens(encoded)[:2] == ["▁", "<0x0A>"]
    old = token_sequence_table([encoded], len(tok))
    new = stop_automaton(tok, [STOP])
    for pieces, expected in SP_CASES:
        ids = ids_of(tok, pieces)
        assert table_stop_index(old, ids) is None
        assert table_stop_index(new, ids) == expected
    assert table_stop_index(old, encoded) == len(encoded) - 1  # it only matches its own spelling


@pytest.mark.parametrize("name", ["sentencepiece", "byte_level"])
def test_token_bytes_concatenate_to_the_decoded_text(toks, name):
    tok = toks[name]
    texts = token_bytes(tok)
    rs = np.random.RandomState(1)
    words = (SP_TEXTS[0] + " " + UNICODE + STOP).split(" ")
    for _ in range(50):
        fragments = [" ".join(rs.choice(words, size=rs.randint(1, 4))) for _ in range(rs.randint(1, 4))]
        ids = list(itertools.chain(*(tok.encode(f, add_special_tokens=False) for f in fragments)))
        ours = b"".join(texts[i] for i in ids).decode("utf-8")
        reference = tok.decode(ids)
        # SentencePiece's decoder drops one leading space of the whole text (as at a response start)
        assert ours == reference or (name == "sentencepiece" and ours == " " + reference)
    assert texts[tok.eos_token_id] == b"" and texts[tok.bos_token_id] == b""
    assert len(token_bytes(tok, vocab_size=len(tok) + 5)) == len(tok) + 5


def test_multiple_stop_strings_and_bad_input(toks):
    tok = toks["byte_level"]
    stops = ["\n\n\nProblem:", "odd", ":)"]
    table = stop_automaton(tok, stops)
    rs = np.random.RandomState(2)
    pool = ids_of(tok, ["Ċ", "ĊĊ", "Problem", ":", ":)", "o", "dd", "odd", "Ġodd", "Ġx"])
    for _ in range(300):
        ids = [pool[i] for i in rs.randint(len(pool), size=rs.randint(1, 10))]
        assert table_stop_index(table, ids) == text_stop_index(tok, ids, stops)
    with pytest.raises(ValueError, match="non-empty"):
        stop_automaton(tok, ["x", ""])
    with pytest.raises(ValueError, match="non-empty"):
        token_sequence_table([[3], []], 10)


# ----------------------------------------------------------------------------- in the decode loop


WALK_VOCAB = 384  # > either tokenizer; one size for both, so they share one compiled program


def walk_model(vocab: int, graph: dict):
    """A model whose next token is uniform over graph[current token] (a random walk): one layer
    with zero attention/MLP outputs, one-hot embeddings and an LM head listing the successors."""
    width = -(-vocab // 8) * 8
    cfg = ModelConfig(vocab_size=vocab, hidden_size=width, intermediate_size=8, num_layers=1, num_heads=1,
                      num_kv_heads=1, head_dim=8)
    params = llama.init_params(cfg, jax.random.key(0))
    params["layers"]["wo"] = jnp.zeros_like(params["layers"]["wo"])
    params["layers"]["w_down"] = jnp.zeros_like(params["layers"]["w_down"])
    params["embed"] = jnp.eye(vocab, width)
    head = np.zeros((width, vocab), np.float32)  # logits: sqrt(width) ~ 20 for successors, 0 else
    for a, successors in graph.items():
        head[a, successors] = 1.0
    params["lm_head"] = jnp.asarray(head)
    return cfg, params


GRAPHS = {
    "sentencepiece": {
        "<s>": ["▁x", "▁5."], "▁x": ["<0x0A>", "▁5."], "▁5.": ["<0x0A>", "▁x"],
        "<0x0A>": ["<0x0A>", "Pro", "Pr", "▁Problem:"], "Pro": ["blem:", "bl"], "Pr": ["o"], "o": ["bl"],
        "bl": ["em:", "em"], "em": [":=", "▁x"], "blem:": ["▁x", "<0x0A>"], "em:": ["<0x0A>", "▁x"],
        ":=": ["<0x0A>"], "▁Problem:": ["<0x0A>", "▁x"],
    },
    "byte_level": {
        "<s>": ["Ġx", "Ġ5"], "Ġx": ["Ċ", "ĠĊĊ", "Ġ5"], "Ġ5": ["ĊĊ", "."], ".": ["Ċ", "ĊĊ"],
        "Ċ": ["Ċ", "ĊĊ", "Problem", "Pro"], "ĊĊ": ["Ċ", "Problem", "ĠProblem"], "ĠĊĊ": ["Ċ", "Problem"],
        "Problem": [":", ":)", "Ġx"], "Pro": ["blem", "bl"], "bl": ["em"], "blem": [":=", "Ġx"],
        "em": [":", "Ġx"], ":": ["Ġx", "Ċ"], ":)": ["Ċ"],
        ":=": ["Ġ5"], "ĠProblem": [":", "Ċ"],
    },
}


@pytest.mark.parametrize("name", ["sentencepiece", "byte_level"])
def test_generate_stops_on_text(toks, name):
    tok = toks[name]
    graph = {ids_of(tok, [a])[0]: ids_of(tok, b) for a, b in GRAPHS[name].items()}
    cfg, params = walk_model(WALK_VOCAB, graph)  # an embedding padded past the tokenizer, as is common
    table = stop_automaton(tok, [STOP], vocab_size=cfg.vocab_size)
    scfg = SamplingConfig(max_new_tokens=20, temperature=1.0, eos_ids=(tok.eos_token_id,))
    prompt = np.array([[tok.bos_token_id]], np.int32)
    run = lambda states: generate(RolloutEnv(params, cfg, scfg, stops=StopTable(states)), prompt, [1],
                                  jax.random.key(3), num_samples=256)
    out = run(table.next_state)
    free = run(np.zeros_like(table.next_state))  # a table that never fires (same shapes: no new compile)
    tokens, lengths, finish = np.asarray(out.tokens), np.asarray(out.lengths), np.asarray(out.finish_reason)
    free_tokens = np.asarray(free.tokens)
    assert np.all(np.asarray(free.finish_reason) == FINISH_LENGTH)
    assert all(t in graph[a] for row in free_tokens for a, t in zip(row, row[1:]))  # the model walks
    stopped = 0
    for r in range(256):
        expected = text_stop_index(tok, free_tokens[r].tolist())
        if expected is None:
            assert finish[r] == FINISH_LENGTH and lengths[r] == 20
        else:
            stopped += 1
            assert finish[r] == FINISH_STOP and lengths[r] == expected + 1, r
        np.testing.assert_array_equal(tokens[r, : lengths[r]], free_tokens[r, : lengths[r]])
    assert 20 <= stopped <= 236, stopped
    if name == "sentencepiece":  # the old token-id stop never fires on what the model writes
        old = token_sequence_table([tok.encode(STOP, add_special_tokens=False)], cfg.vocab_size).next_state
        old = np.pad(old, ((0, table.next_state.shape[0] - old.shape[0]), (0, 0)))  # unreachable extra states
        assert np.all(np.asarray(run(old).finish_reason) == FINISH_LENGTH)


def test_table_must_cover_the_model_vocab(toks):
    tok = toks["byte_level"]
    cfg, params = walk_model(len(tok) + 8, {})
    with pytest.raises(ValueError, match="does not cover"):
        generate(RolloutEnv(params, cfg, SamplingConfig(max_new_tokens=2), stops=stop_automaton(tok, [STOP])),
                 np.array([[1]], np.int32), [1], jax.random.key(0))
    padded = stop_automaton(tok, [STOP], vocab_size=cfg.vocab_size)
    assert padded.vocab_size == cfg.vocab_size
    assert np.all(padded.next_state[:, len(tok):] == np.arange(len(STOP) + 1)[:, None])  # no text: state kept


# ----------------------------------------------------------------------------- cutting responses


@EACH_TOKENIZER
def test_cut_at_stop(toks, name, cases):
    tok = toks[name]
    table = stop_automaton(tok, [STOP])
    for pieces, expected in cases:
        ids = ids_of(tok, pieces)
        cut = cut_at_stop(tok, table, ids)
        full = tok.decode(ids)
        if expected is None:
            assert cut == (full, ids, len(ids), False)
            continue
        assert cut.stopped and cut.text == full[: full.index(STOP)]
        assert cut.token_ids[-1] == tok.eos_token_id
        assert tok.decode(cut.token_ids[:-1]) == cut.text  # ids consistent with the text
        assert cut.token_ids[: cut.num_sampled] == ids[: cut.num_sampled]
    # stop at a token boundary: the tokens before it, then EOS
    ids = ids_of(tok, cases[0][0])
    first_newline = next(j for j, p in enumerate(cases[0][0]) if p in ("<0x0A>", "Ċ", "ĊĊ"))
    assert cut_at_stop(tok, table, ids).token_ids == ids[:first_newline] + [tok.eos_token_id]
    assert cut_at_stop(tok, table, ids, append_eos=False).token_ids == ids[:first_newline]


def test_cut_inside_a_token_and_after_a_prefix(toks):
    tok = toks["byte_level"]
    table = stop_automaton(tok, [STOP])
    # the stop begins after the space of "ĠĊĊ": that token is re-spelled as its kept text " "
    ids = ids_of(tok, ["Ġb", "ĠĊĊ", "Ċ", "Pro", "blem", ":=", "Ġ5"])
    cut = cut_at_stop(tok, table, ids)
    assert cut.text == " b " and cut.num_sampled == 1
    assert cut.token_ids == ids[:1] + ids_of(tok, ["Ġ"]) + [tok.eos_token_id]
    # an MC continuation: the stop spans prefix and continuation, so it is not searched there
    prefix = ids_of(tok, ["Ġx", "ĊĊ"])
    cont = ids_of(tok, ["Ċ", "Problem", ":", "Ġx", "ĊĊ", "Ċ", "Problem", ":)"])
    cut = cut_at_stop(tok, table, prefix + cont, search_from=len(prefix))
    assert cut.text == tok.decode(prefix + cont[:3]) + " x" and cut.num_sampled == len(prefix) + 4
    assert cut_at_stop(tok, table, prefix + cont).num_sampled == 1  # without search_from: the first one
    assert not cut_at_stop(tok, table, prefix + cont, search_from=len(prefix + cont)).stopped  # nothing left
    sp = toks["sentencepiece"]
    with pytest.raises(ValueError, match="text stop table"):
        cut_at_stop(sp, token_sequence_table([[5]], len(sp)), [5])
