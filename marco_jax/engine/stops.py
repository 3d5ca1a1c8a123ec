"""Stop strings matched on device, exactly, over the bytes the tokens spell.

A stop string may end inside a token (".\\n\\n" ends a "\\n\\n" step), span several
("</" "Output" ">") or be spelled with tokens the tokenizer would never produce,
so each string runs a byte-level Knuth-Morris-Pratt automaton, precomputed per
token: ``table_sjv[s, j, v]`` is the state after token ``v`` when the last ``j``
bytes matched the first ``j`` of string ``s``; reaching ``len(s)`` means the
string has appeared. The decode loop then costs one gather per step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from transformers.convert_slow_tokenizer import bytes_to_unicode

from marco_jax.errors import MarcoError

_NEVER = np.iinfo(np.int32).max  # length of the dummy "no stop strings" automaton


@dataclasses.dataclass(frozen=True)
class StopTable:
    """Per-token automaton transitions for a set of stop strings (see module doc)."""

    strings: tuple[str, ...]
    table_sjv: np.ndarray  # int32 next state
    lengths_s: np.ndarray  # int32 bytes per string: the accepting state

    @classmethod
    def empty(cls, vocab_size: int) -> "StopTable":
        """No stop strings: one automaton that never accepts."""
        return cls((), np.zeros((1, 1, vocab_size), np.int32), np.array([_NEVER], np.int32))


def _kmp_delta(pattern: bytes) -> np.ndarray:
    """(len(pattern), 256) next state of the byte-level KMP automaton."""
    n = len(pattern)
    delta = np.zeros((n, 256), np.int32)
    delta[0, pattern[0]] = 1
    fallback = 0
    for j in range(1, n):
        delta[j] = delta[fallback]
        delta[j, pattern[j]] = j + 1
        fallback = delta[fallback, pattern[j]]
    return delta


def token_bytes(tokenizer: Any, vocab_size: int) -> list[bytes]:
    """The bytes each token id spells (b"" for ids the tokenizer lacks): byte-level BPE
    tokens (Qwen2, the built-in tokenizer) map back through GPT-2's byte alphabet
    exactly, other tokens are decoded one id at a time."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), vocab_size))))
    byte_of = {symbol: byte for byte, symbol in bytes_to_unicode().items()}
    special = set(tokenizer.all_special_tokens)
    out = []
    for i, piece in enumerate(pieces):
        if piece is None:
            out.append(b"")
        elif piece not in special and all(ch in byte_of for ch in piece):
            out.append(bytes(byte_of[ch] for ch in piece))
        else:
            out.append(tokenizer.decode([i]).encode("utf-8"))
    return out + [b""] * (vocab_size - len(out))


def _transitions(delta: np.ndarray, pieces: Sequence[bytes]) -> np.ndarray:
    """(states, vocab) state after each token, run for all tokens at once; the
    accepting state len(pattern) is absorbing within a token."""
    n = delta.shape[0]
    vocab = len(pieces)
    longest = max(len(p) for p in pieces)
    bytes_vl = np.zeros((vocab, longest), np.uint8)
    lengths_v = np.array([len(p) for p in pieces])
    for v, piece in enumerate(pieces):
        bytes_vl[v, :len(piece)] = np.frombuffer(piece, np.uint8)
    delta_full = np.vstack([delta, np.full((1, 256), n, np.int32)])  # accept stays accept
    state_jv = np.broadcast_to(np.arange(n)[:, None], (n, vocab)).copy()
    for pos in range(longest):
        live_v = lengths_v > pos
        state_jv[:, live_v] = delta_full[state_jv[:, live_v], bytes_vl[live_v, pos]]
    return state_jv


def build_stop_table(tokenizer: Any, strings: Sequence[str], vocab_size: int) -> StopTable:
    """Automata for ``strings`` over the model's vocabulary (``vocab_size`` ids)."""
    if not strings:
        return StopTable.empty(vocab_size)
    return stop_table_from_bytes(token_bytes(tokenizer, vocab_size), strings)


def stop_table_from_bytes(pieces: Sequence[bytes], strings: Sequence[str]) -> StopTable:
    """Automata for ``strings`` given the bytes of every token id."""
    strings = tuple(strings)
    if not strings:
        return StopTable.empty(len(pieces))
    if any(not s for s in strings):
        raise MarcoError("stop strings must be non-empty")
    patterns = [s.encode("utf-8") for s in strings]
    states = max(len(p) for p in patterns)
    table_sjv = np.zeros((len(strings), states, len(pieces)), np.int32)
    for s, pattern in enumerate(patterns):
        table_sjv[s, :len(pattern)] = _transitions(_kmp_delta(pattern), pieces)
    return StopTable(strings, table_sjv, np.array([len(p) for p in patterns], np.int32))


def advance(table_sjv: jax.Array, lengths_s: jax.Array, state_bs: jax.Array,
            token_b: jax.Array, on_bs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Feed one token per row; returns the new states and which rows hit one of
    the stop strings they use (``on_bs``: row b stops on string s)."""
    strings = jnp.arange(table_sjv.shape[0])
    state_bs = table_sjv[strings[None, :], state_bs, token_b[:, None]]
    return state_bs, jnp.any((state_bs >= lengths_s[None, :]) & on_bs, axis=-1)
