"""Unit tests of the server's engine-thread helpers that need no engine."""

from marco_jax.serve.worker import decoding_once


def test_decoding_once_decodes_each_text_once_across_snapshots():
    calls = []

    def decode(tokens: list[int]) -> str:
        calls.append(tokens)
        return "-".join(map(str, tokens))

    decode_once = decoding_once(decode)
    tree = [[1, 2], [3], []]
    first = [decode_once(t) for t in tree]
    tree.append([4, 5])  # the tree grows by one node between snapshots
    second = [decode_once(t) for t in tree]
    assert first == ["1-2", "3", ""]
    assert second == first + ["4-5"]
    assert calls == [[1, 2], [3], [], [4, 5]]
