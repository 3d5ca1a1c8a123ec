"""Stop-string automata against a plain byte search, over random token sequences."""

import jax.numpy as jnp
import numpy as np
import pytest

from marco_jax.engine import stops
from marco_jax.errors import MarcoError
from marco_jax.tokenizer import builtin_tokenizer

PIECES = [b"a", b"b", b"ab", b"ba", b"aab", b"\n", b".\n\n", b"</", b"Output", b">", b"",
          "é".encode()[:1], "é".encode()[1:], b"</Output>\n"]


def first_stop(tokens, strings):
    """1-based index of the token that completes the first stop string, or None."""
    text = b""
    for i, token in enumerate(tokens):
        text += PIECES[token]
        if any(s.encode() in text for s in strings):
            return i + 1
    return None


def run(table, tokens, on=None):
    strings = table.table_sjv.shape[0]
    state = jnp.zeros((1, strings), jnp.int32)
    on = jnp.ones((1, strings), bool) if on is None else jnp.asarray([on])
    for i, token in enumerate(tokens):
        state, hit = stops.advance(jnp.asarray(table.table_sjv), jnp.asarray(table.lengths_s),
                                   state, jnp.asarray([token]), on)
        if bool(hit[0]):
            return i + 1
    return None


@pytest.mark.parametrize("strings", [["aab"], ["abab", "\n\n"], ["</Output>"], ["é", "ba"]])
def test_automaton_matches_byte_search(strings):
    table = stops.stop_table_from_bytes(PIECES, strings)
    rng = np.random.default_rng(len(strings[0]))
    for _ in range(40):
        tokens = rng.integers(0, len(PIECES), size=12).tolist()
        assert run(table, tokens) == first_stop(tokens, strings), tokens


def test_spellings_the_tokenizer_would_not_use():
    table = stops.stop_table_from_bytes(PIECES, ["</Output>"])
    assert run(table, [7, 8, 9]) == 3  # "</" "Output" ">"
    assert run(table, [13]) == 1  # inside one token, with a trailing newline
    assert run(table, [7, 8, 1]) is None
    table = stops.stop_table_from_bytes(PIECES, ["\n\n"])
    assert run(table, [5, 10, 5]) == 3  # "\n" "" "\n": empty tokens keep the state
    assert run(table, [0, 6]) == 2  # ".\n\n" ends a step mid-token


def test_a_row_stops_only_on_the_strings_it_uses():
    table = stops.stop_table_from_bytes(PIECES, ["</Output>", "\n\n"])
    tokens = [0, 6, 7, 8, 9]  # ".\n\n" at token 2, "</Output>" at token 5
    assert run(table, tokens) == 2
    assert run(table, tokens, on=[True, False]) == 5
    assert run(table, tokens, on=[False, True]) == 2
    assert run(table, tokens, on=[False, False]) is None


def test_builtin_tokenizer_bytes_and_errors():
    tokenizer = builtin_tokenizer()
    pieces = stops.token_bytes(tokenizer, 300)
    assert pieces[ord("a")] == b"a" and pieces[10] == b"\n" and pieces[0xC3] == b"\xc3"
    assert pieces[258] == b"<|im_end|>" and pieces[299] == b""
    table = stops.build_stop_table(tokenizer, ["\n\n"], 300)
    assert table.table_sjv.shape == (1, 2, 300)
    with pytest.raises(MarcoError, match="non-empty"):
        stops.build_stop_table(tokenizer, [""], 300)
    assert stops.build_stop_table(tokenizer, [], 300).strings == ()
