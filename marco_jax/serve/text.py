"""A choice's tokens turned into response text as they arrive.

The text is the UTF-8 decoding of the tokens' exact bytes, fed one token at a
time, so a character split over two tokens appears once both are in and the
streamed deltas concatenate to exactly the text a non-streamed response gets.
The client's stop strings are found here, on the host, as OpenAI's and vLLM's
servers do: the text ends before the first one, and while the choice runs the
tail that could still begin a stop string is held back, so nothing released
is ever taken back.
"""

from __future__ import annotations

import codecs
from typing import Sequence


class ChoiceText:
    """Text, stop strings and released deltas of one generated choice."""

    def __init__(self, token_bytes: Sequence[bytes], stops: Sequence[str] = (),
                 hidden: frozenset[int] = frozenset()):
        self._bytes = token_bytes
        self._stops = tuple(stops)
        self._longest = max((len(s) for s in self._stops), default=0)
        self._hidden = hidden  # tokens counted but not shown (the EOS that ended it)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self.tokens = 0  # tokens taken: those after a stop string's last one are dropped
        self.stopped = False  # a stop string was found
        self._released = 0

    def feed(self, tokens: Sequence[int]) -> int:
        """Take new tokens, up to the one that completes a stop string; returns how
        many were taken."""
        taken = 0
        for token in tokens:
            if self.stopped:
                break
            taken += 1
            self.tokens += 1
            if token in self._hidden:
                continue
            before = len(self.text)
            self.text += self._decoder.decode(self._bytes[token])
            self._find_stop(max(0, before - self._longest + 1))
        return taken

    def _find_stop(self, start: int) -> None:
        hits = [at for at in (self.text.find(s, start) for s in self._stops) if at >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.stopped = True

    def release(self, final: bool = False) -> str:
        """Text not handed out yet that no stop string can still claim; ``final``:
        the choice is over, so all of it (an unfinished character becomes U+FFFD)."""
        if final and not self.stopped:
            self.text += self._decoder.decode(b"", final=True)
        end = len(self.text)
        if not (final or self.stopped):
            end -= self._held_back()
        delta = self.text[self._released:end]
        self._released = max(self._released, end)
        return delta

    def _held_back(self) -> int:
        """Length of the longest tail of the text that begins some stop string."""
        for size in range(min(self._longest - 1, len(self.text)), 0, -1):
            tail = self.text[-size:]
            if any(s.startswith(tail) for s in self._stops):
                return size
        return 0
