"""The reasoning environment: turns a sampled continuation into a tree action,
its reward, and (with reflection) a rethinking sibling.

A continuation is split into the child's *action* (a mini-step of N tokens,
or a whole step ending at the step delimiter) and the *rollout* after it.
The reward is Marco-o1's confidence ``v = mean_i c_i`` over the tokens that
``reward_tokens`` names: the rollout's (the action's when the action itself
ended the answer), the action's, or both.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from marco_jax.search.config import SearchConfig

THOUGHT_END = "</Thought>"


@dataclasses.dataclass(frozen=True)
class Step:
    """What one continuation contributes to the tree."""

    action: list[int]
    rollout: list[int]
    value: float
    ended: bool  # the continuation finished the answer (EOS or a stop string)
    reflection: list[int] | None  # tokens of a rethinking sibling, if any


class ReasoningEnv:
    """Splits continuations and values them by the search config's rules."""

    def __init__(self, tokenizer: Any, cfg: SearchConfig):
        self.tokenizer, self.cfg = tokenizer, cfg

    def action_length(self, tokens: list[int]) -> int:
        """How many of a continuation's tokens form the child's action."""
        if self.cfg.action == "mini_step":
            return min(self.cfg.mini_step_tokens, len(tokens))
        cap = min(self.cfg.step_max_tokens, len(tokens))
        for end in range(1, cap + 1):  # the first token that completes the delimiter
            if self.cfg.step_delimiter in self.tokenizer.decode(tokens[:end]):
                return end
        return cap

    def value(self, confidences: np.ndarray, action_len: int) -> float:
        mode = self.cfg.reward_tokens
        if mode == "action" or (mode == "rollout" and action_len == len(confidences)):
            part = confidences[:action_len]
        elif mode == "rollout":
            part = confidences[action_len:]
        else:
            part = confidences
        return float(part.mean()) if len(part) else 0.0

    def reflection(self, action: list[int]) -> list[int] | None:
        text = self.tokenizer.decode(action)
        if not self.cfg.reflection or THOUGHT_END not in text:
            return None
        before = text[:text.index(THOUGHT_END)].rstrip()
        return self.tokenizer.encode(f"{before}\n\n{self.cfg.reflection_text}\n\n",
                                     add_special_tokens=False)

    def wrong_answer_reflection(self, chain: list[int], answer: str | None) -> list[int]:
        """A reflection node's tokens after a chain the verifier rejected.
        ``continue``: the chain (its special tokens dropped, so the turn goes on)
        and the reflection text, so the model rethinks having seen its mistake;
        ``restart``: the text alone, a fresh start told only which answer is wrong."""
        note = self.cfg.reflection_text.replace("{answer}", answer or "?")
        if self.cfg.reflect_wrong == "restart":
            return self.tokenizer.encode(f"{note}\n\n", add_special_tokens=False)
        text = self.tokenizer.decode(chain, skip_special_tokens=True).rstrip()
        return self.tokenizer.encode(f"{text}\n\n{note}\n\n", add_special_tokens=False)

    def step(self, tokens: list[int], confidences: np.ndarray, finish_reason: str) -> Step:
        action_len = self.action_length(tokens)
        action = tokens[:action_len]
        return Step(action, tokens[action_len:], self.value(confidences, action_len),
                    finish_reason in ("eos", "stop"), self.reflection(action))
