"""A choice's text, streamed so that its deltas add up to exactly the whole response's: exact
bytes decoded incrementally, and the client's stop strings found on the host (as OpenAI's and
vLLM's servers do), holding back a tail that may begin one, so nothing released is taken back."""

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
        self.over = False  # all of the text was released
        self._released = 0

    def feed(self, tokens: Sequence[int]) -> int:
        """Take tokens up to the one that completes a stop string; returns how many."""
        first = self.tokens
        for token in tokens:
            if self.stopped:
                break
            self.tokens += 1
            if token in self._hidden:
                continue
            before = len(self.text)
            self.text += self._decoder.decode(self._bytes[token])
            self._find_stop(max(0, before - self._longest + 1))
        return self.tokens - first

    def _find_stop(self, start: int) -> None:
        hits = [at for at in (self.text.find(s, start) for s in self._stops) if at >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.stopped = True

    def release(self, final: bool = False) -> str:
        """New text no stop string can still claim; ``final``: all of it (the choice is over)."""
        if final and not self.stopped:
            self.text += self._decoder.decode(b"", final=True)
        self.over = self.over or final
        end = len(self.text) if final or self.stopped else len(self.text) - self._held_back()
        delta = self.text[self._released:end]
        self._released = max(self._released, end)
        return delta

    def _held_back(self) -> int:
        """Length of the longest tail of the text that begins some stop string."""
        sizes = range(min(self._longest - 1, len(self.text)), 0, -1)
        return next((n for n in sizes if any(s.startswith(self.text[-n:]) for s in self._stops)), 0)
