"""Response text from tokens: exact UTF-8 across tokens, host-side stop strings, hold-back."""

from marco_jax.serve.text import ChoiceText

PIECES = [b"Hel", b"lo", b" wor", b"ld", b"\n\n", "é".encode()[:1], "é".encode()[1:], b"<eos>",
          b"END", b"E", b"ND!"]


def stream(text, tokens, step=1):
    """Feed ``tokens`` ``step`` at a time; the deltas released along the way."""
    out = []
    for i in range(0, len(tokens), step):
        text.feed(tokens[i:i + step])
        out.append(text.release())
        if text.stopped:
            break
    out.append(text.release(final=True))
    return out


def test_a_character_split_over_tokens_appears_once_whole():
    text = ChoiceText(PIECES)
    deltas = stream(text, [0, 5, 6, 1])
    assert "".join(deltas) == "Helélo" and deltas[:3] == ["Hel", "", "é"]


def test_the_text_ends_before_the_first_stop_string_even_across_tokens():
    for step in (1, 2, 5):
        text = ChoiceText(PIECES, stops=["END!", "ld\n"])
        deltas = stream(text, [0, 1, 2, 9, 10, 4, 3], step)
        assert "".join(deltas) == "Hello wor" and text.stopped
        assert text.tokens == 5  # the token that completed "END!" counts; later ones do not
    text = ChoiceText(PIECES, stops=["END!"])
    # "E" is held back while it may begin the stop string, released when the choice ends
    assert stream(text, [0, 9]) == ["Hel", "", "E"] and not text.stopped
    text = ChoiceText(PIECES, stops=["END!"])
    assert "".join(stream(text, [0, 9, 1])) == "HelElo"


def test_hidden_tokens_count_but_do_not_show():
    text = ChoiceText(PIECES, hidden=frozenset({7}))
    assert "".join(stream(text, [0, 1, 7])) == "Hello" and text.tokens == 3
