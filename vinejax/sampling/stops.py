"""Stop strings matched on generated TEXT, whatever the tokenizer, inside the jitted decode loop.

A stop string such as "\\n\\n\\nProblem:" can be written by many token sequences: SentencePiece
(Llama-2) spells newlines as byte-fallback tokens <0x0A> and glues leading spaces to words, and
the string may begin or end inside a token. So stops are matched on the bytes of the generated
text, not on the token ids of the string encoded alone.

`stop_automaton(tokenizer, strings)` precomputes, once per (tokenizer, stop strings), an
Aho-Corasick automaton over the UTF-8 bytes of the strings (KMP for one string), lifted to
tokens: `next_state[s, v]` is the automaton state after appending token v's text in state s,
or -1 when a stop string is completed anywhere inside that text. The decode loop carries one
int32 state per row (0 at the start of the response) and does one gather per step.

A token's text is its marginal decoded text: what it adds to `tokenizer.decode` when appended
after another token (which keeps SentencePiece's word-start spaces), as UTF-8 bytes; tokens that
hold part of a multi-byte character (byte fallback <0xE2>, byte-level BPE pieces) contribute
their raw bytes. Special tokens contribute nothing (as with `skip_special_tokens=True`).

`cut_at_stop` turns a stopped response into what the official code trains on and grades: the
text before the stop string, and token ids consistent with it, ending with EOS.
"""
from __future__ import annotations

import collections
import dataclasses
import re
from typing import NamedTuple, Optional, Sequence

import numpy as np

STOPPED = -1  # next_state value: a stop string ends inside this token's text
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@dataclasses.dataclass(frozen=True, eq=False)
class StopTable:
    """Token-level stop automaton (build it with `stop_automaton` or `token_sequence_table`).

    next_state: int32[S, V]; state 0 = nothing matched yet; -1 (`STOPPED`) = a stop completes.
    strings: the stop strings (empty for token-id sequences); token_bytes: the UTF-8 text each
    token id appends (empty for special tokens; None for token-id sequences); spelling: {text
    bytes: token id} used to re-spell a token cut by a stop string (ordinary tokens preferred
    over byte-fallback pieces). Pass it to `generate` / `continue_from_prefixes` as `stops=`.
    """

    next_state: np.ndarray
    strings: tuple = ()
    token_bytes: Optional[tuple] = None
    spelling: Optional[dict] = None

    @property
    def vocab_size(self) -> int:
        return self.next_state.shape[1]


def stop_automaton(tokenizer, stop_strings: Sequence[str], vocab_size: Optional[int] = None) -> StopTable:
    """The text-level stop automaton of `stop_strings` for a Hugging Face tokenizer.

    vocab_size: columns of the table (default len(tokenizer)); give the model's vocab size when
    its embedding is padded beyond the tokenizer (ids past the tokenizer have no text).
    """
    strings = tuple(str(s) for s in stop_strings)
    if not strings or any(not s for s in strings):
        raise ValueError(f"stop strings must be non-empty, got {list(strings)!r}")
    texts, byte_piece = _token_texts(tokenizer, vocab_size)
    delta, accept = _aho_corasick([list(s.encode("utf-8")) for s in strings], 256)
    spelling: dict = {}
    for tok in sorted(range(len(texts)), key=lambda t: byte_piece[t]):  # ordinary tokens first
        if texts[tok]:
            spelling.setdefault(texts[tok], tok)
    return StopTable(_lift(delta, accept, texts), strings, tuple(texts), spelling)


def token_sequence_table(sequences: Sequence[Sequence[int]], vocab_size: int) -> StopTable:
    """Stop automaton of token-id sequences (a row stops once it has generated one of them)."""
    seqs = [[int(t) for t in s] for s in sequences]
    if not seqs or any(not s for s in seqs):
        raise ValueError("stop sequences must be non-empty")
    if any(not 0 <= t < vocab_size for s in seqs for t in s):
        raise ValueError(f"stop sequence token ids must be in [0, {vocab_size})")
    delta, accept = _aho_corasick(seqs, vocab_size)
    return StopTable(np.where(accept[delta], STOPPED, delta).astype(np.int32))


def decode_automata(stop_sequences: Sequence[Sequence[int]], stop_table, vocab_size: int) -> list:
    """The stop automata a decode runs, in order: the token-id `stop_sequences`' (built here; none
    when empty), then `stop_table` (a `StopTable.next_state` int[S, V'], numpy or traced; None:
    none). Raises ValueError when stop_table is not 2-D or covers fewer than vocab_size token ids."""
    tables = [token_sequence_table(stop_sequences, vocab_size).next_state] if stop_sequences else []
    if stop_table is not None:
        if stop_table.ndim != 2 or stop_table.shape[1] < vocab_size:
            raise ValueError(f"stop table of shape {stop_table.shape} does not cover the model's {vocab_size} token ids")
        tables.append(stop_table)
    return tables


def token_bytes(tokenizer, vocab_size: Optional[int] = None) -> list[bytes]:
    """UTF-8 text that each token id appends to the decoded text ([vocab_size] list of bytes)."""
    return _token_texts(tokenizer, vocab_size)[0]


def _token_texts(tokenizer, vocab_size):
    """(token_bytes, is_byte_piece): each id's text and whether it is a byte-fallback <0xHH> piece."""
    n = len(tokenizer)
    size = n if vocab_size is None else max(int(vocab_size), n)
    anchor = tokenizer.encode("a", add_special_tokens=False)[-1]
    decode = dict(skip_special_tokens=True, clean_up_tokenization_spaces=False)
    base = tokenizer.decode([anchor], **decode)
    pairs = tokenizer.batch_decode([[anchor, i] for i in range(n)], **decode)
    pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
    byte_level = _byte_level_decoder()
    out, byte_piece = [], []
    for i, (pair, piece) in enumerate(zip(pairs, pieces)):
        text = pair[len(base):] if pair.startswith(base) else tokenizer.decode([i], **decode)
        data = text.encode("utf-8")
        match = _BYTE_PIECE.fullmatch(piece or "")
        if "\ufffd" in text and piece is not None:  # part of a multi-byte character: raw bytes
            if match:
                data = bytes([int(match.group(1), 16)])
            elif all(c in byte_level for c in piece):
                data = bytes(byte_level[c] for c in piece)
        out.append(data)
        byte_piece.append(bool(match))
    pad = size - n
    return out + [b""] * pad, byte_piece + [False] * pad


class StopCut(NamedTuple):
    """A response cut before its first stop string.

    text: tokenizer.decode(token_ids, skip_special_tokens=True), the response before the stop;
    token_ids: the response's tokens for `text`, then EOS when a stop string was found;
    num_sampled: how many leading token_ids are the sampled tokens unchanged (their sampler
    log-probs still apply; the rest are re-spelled text or the appended EOS);
    stopped: whether a stop string was found.
    """

    text: str
    token_ids: list
    num_sampled: int
    stopped: bool


def cut_at_stop(tokenizer, stops: StopTable, token_ids: Sequence[int], search_from: int = 0,
                append_eos: bool = True) -> StopCut:
    """Cut a response's token ids before the first stop string in its text (the official code's
    vLLM `stop`: the string and everything after it are removed, then EOS is appended).

    token_ids: one response as sampled (e.g. `tokens[r, :lengths[r]]`); search_from: token index
    where the search starts (an MC continuation after a prefix of the response: the decode loop
    matches within the continuation only). The stop string's first byte lies in some token:
    * at that token's start: the response keeps the tokens before it, then EOS;
    * inside it (e.g. the byte-level token " \\n\\n" before "\\nProblem:"): that token is replaced
      by the fewest tokens that spell its kept text (" ", byte-exact), then EOS.
    A response with no stop string is returned unchanged (stopped=False).
    """
    if stops.token_bytes is None:
        raise ValueError("cut_at_stop needs a text stop table (stop_automaton), not token-id sequences")
    ids = [int(t) for t in token_ids]
    texts = [stops.token_bytes[t] if 0 <= t < len(stops.token_bytes) else b"" for t in ids]
    ends = np.cumsum([len(b) for b in texts], dtype=np.int64)
    full = b"".join(texts)
    origin = int(ends[min(search_from, len(ids)) - 1]) if search_from > 0 and ids else 0
    found = [full.find(s.encode("utf-8"), origin) for s in stops.strings]
    found = [f for f in found if f >= 0]
    decode = lambda x: tokenizer.decode(x, skip_special_tokens=True)
    if not found:
        return StopCut(decode(ids), ids, len(ids), False)
    cut = min(found)
    k = int(np.searchsorted(ends, cut, side="right"))  # the token holding the stop's first byte
    start = int(ends[k - 1]) if k else 0
    kept = ids[:k] + _spell(stops.spelling, full[start:cut])
    eos = [tokenizer.eos_token_id] if append_eos and tokenizer.eos_token_id is not None else []
    return StopCut(decode(kept), kept + eos, k, True)


# ----------------------------------------------------------------------------- internals


def _spell(spelling: dict, data: bytes) -> list:
    """Fewest token ids whose texts concatenate to `data` (part of one token: a few bytes)."""
    best = [[]] + [None] * len(data)  # best[i]: fewest token ids spelling data[:i]
    for end in range(1, len(data) + 1):
        for start in range(end):
            tok = spelling.get(data[start:end]) if best[start] is not None else None
            if tok is not None and (best[end] is None or len(best[start]) + 1 < len(best[end])):
                best[end] = best[start] + [tok]
    if best[-1] is None:
        raise ValueError(f"no tokens of the tokenizer spell {data!r}")
    return best[-1]


def _aho_corasick(patterns: list, alphabet: int) -> tuple[np.ndarray, np.ndarray]:
    """Aho-Corasick automaton of symbol sequences: goto table int32[S, alphabet] (failure links
    folded in) and accept bool[S] (some pattern ends at the state). State 0 is the root."""
    children = [{}]
    accept = [False]
    for pattern in patterns:
        node = 0
        for symbol in pattern:
            if symbol not in children[node]:
                children[node][symbol] = len(children)
                children.append({})
                accept.append(False)
            node = children[node][symbol]
        accept[node] = True
    delta = np.zeros((len(children), alphabet), np.int32)
    fail = [0] * len(children)
    queue = collections.deque()
    for symbol, child in children[0].items():
        delta[0, symbol] = child
        queue.append(child)
    while queue:  # breadth first: a state's failure target is complete before the state
        node = queue.popleft()
        accept[node] = accept[node] or accept[fail[node]]
        delta[node] = delta[fail[node]]
        for symbol, child in children[node].items():
            fail[child] = int(delta[fail[node], symbol]) if node else 0
            delta[node, symbol] = child
            queue.append(child)
    return delta, np.asarray(accept, bool)


def _lift(delta: np.ndarray, accept: np.ndarray, texts: list) -> np.ndarray:
    """Byte automaton → token table int32[S, V]: run every token's bytes from every state.

    Tokens are processed longest first, so byte column j only touches the tokens that long."""
    lengths = np.array([len(t) for t in texts], np.int64)
    order = np.argsort(-lengths, kind="stable")
    width = max(int(lengths.max()), 1)
    padded = np.zeros((len(texts), width), np.uint8)  # rows in `order`
    for row, tok in enumerate(order):
        padded[row, : lengths[tok]] = np.frombuffer(texts[tok], np.uint8)
    live_count = (lengths[order][None, :] > np.arange(width)[:, None]).sum(axis=1)  # [width]
    state = np.repeat(np.arange(delta.shape[0], dtype=np.int32)[:, None], len(texts), axis=1)  # [S, V]
    hit = np.zeros(state.shape, bool)
    for j in range(width):
        n = live_count[j]
        st, done = state[:, :n], hit[:, :n]  # views: tokens with a byte at column j
        nxt = delta[st, padded[None, :n, j]]
        st[...] = np.where(done, st, nxt)
        done |= accept[st]
    out = np.empty_like(state)
    out[:, order] = np.where(hit, STOPPED, state)
    return out


def _byte_level_decoder() -> dict:
    """GPT-2 byte-level BPE alphabet: printable character → byte (bytes that are not printable
    Latin-1 characters are shifted to U+0100 onwards, in byte order)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    shifted = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable}
    table.update({chr(256 + i): b for i, b in enumerate(shifted)})
    return table
