"""What a finished path is worth, by the search config's ``reward`` rule.

``confidence`` is Marco-o1 v1's reward (the mean token confidence the caller
measured); ``verifier`` is v2's: 1 if the answer text matches the problem's
gold answer, else 0 (an answer cut off before it finished is 0);
``mix`` weighs the two (``reward_weight`` on the verifier). The verdict is
returned too, so a search can count correct answers (for its stopping rules
and its training data) whatever the reward.
"""

from __future__ import annotations

from marco_jax.errors import MarcoError
from marco_jax.search.config import SearchConfig
from marco_jax.grading import verifier


class Reward:
    def __init__(self, cfg: SearchConfig):
        self.cfg = cfg

    def check_gold(self, key: object, gold: str | None) -> None:
        """Refuse a problem the reward cannot score: it needs a gold answer."""
        if self.cfg.needs_gold and gold is None:
            raise MarcoError(f"problem {key!r} has no answer, but reward {self.cfg.reward!r} "
                             "compares answers with it")

    def __call__(self, confidence: float, text: str | None,
                 gold: str | None) -> tuple[float, bool | None]:
        """``(value, correct)`` of a path; ``text`` is None when the answer did not
        finish; ``correct`` is None without a gold answer."""
        correct = None
        if gold is not None:
            correct = text is not None and verifier(self.cfg.verifier)(text, gold)
        if self.cfg.reward == "confidence":
            return confidence, correct
        verified = float(bool(correct))
        if self.cfg.reward == "verifier":
            return verified, correct
        weight = self.cfg.reward_weight
        return weight * verified + (1 - weight) * confidence, correct
