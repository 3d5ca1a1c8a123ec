"""Search job configs: named JSON files in ``marco_jax/configs/search/`` (or a path).

A file holds ``description``, ``template`` (marco, chat or none), ``final``
(most_visited, max_value or vote), ``stop`` (a list of stop strings), a
``search`` object with :class:`SearchConfig`'s fields and, for Marco-o1 v2's
tagged search (``"action": "tagged"``), an ``action_tree``
(:class:`marco_jax.search.action_tree.ActionTree`). Keys and types are
checked by :mod:`marco_jax.run_config`, the reader training configs use: a
misspelt key, a wrong type or a number out of its range is an error naming the key
and the file (or the override that set it).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from marco_jax.errors import MarcoError, require
from marco_jax.search.action_tree import ActionTree
from marco_jax.run_config import (apply_overrides, build, choice_checks, named_config,
                                  range_checks, ranged)

FINALS = ("most_visited", "max_value", "vote")
ACTIONS = ("mini_step", "step", "tagged")
REWARDS = ("confidence", "verifier", "mix")
VERIFIERS = ("numeric", "letter_count", "exact")
TEMPLATES = ("marco", "chat", "none")
REFLECT_WRONG = ("off", "continue", "restart")
REWARD_TOKENS = ("rollout", "action", "both")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    action: str = "mini_step"  # "mini_step", "step" or "tagged" (v2's action tree)
    mini_step_tokens: int = ranged(64, at_least=1)
    step_delimiter: str = "\n\n"
    step_max_tokens: int = ranged(256, at_least=1)  # cap on one step action
    children: int = ranged(4, at_least=1)  # continuations sampled per expansion
    # selections per tree (tagged: rollouts to an answer), at most
    iterations: int = ranged(8, at_least=1)
    c_uct: float = ranged(1.0, at_least=0)
    # new tokens per call: action + rollout (tagged: one node)
    call_tokens: int = ranged(512, at_least=1)
    max_tokens: int = ranged(1024, at_least=1)  # generated tokens on a path (beyond the prompt)
    temperature: float = ranged(0.7, at_least=0)
    top_p: float = ranged(0.95, above=0, at_most=1)
    top_k: int = ranged(0, at_least=0)  # 0: off
    reward_tokens: str = "rollout"  # "rollout", "action" or "both"
    # v1: a rethinking sibling (reflection_text) of every action that closes the thought
    reflection: bool = False
    # v2's dynamic reflection in the plain search, after a rollout the verifier
    # rejects: "continue" adds a sibling that continues that wrong chain with
    # reflection_text; "restart" adds a child of the root that starts the answer
    # afresh with it. "{answer}" in the text stands for the rejected answer.
    reflect_wrong: str = "off"
    reflection_text: str = "Wait! Maybe I made some mistakes! I need to rethink from scratch."
    # What a path is worth: model confidence (v1), the ground-truth verifier's
    # 1/0 on a finished answer (v2), or reward_weight x verifier + the rest x confidence.
    reward: str = "confidence"
    verifier: str = "numeric"
    reward_weight: float = ranged(0.5, at_least=0, at_most=1)
    # Per-problem early stop (0: off): at stop_at_correct correct answers, or once
    # stop_after_rollouts rollouts found at least stop_min_correct (v2: 8; 32 and 4).
    stop_at_correct: int = ranged(0, at_least=0)
    stop_after_rollouts: int = ranged(0, at_least=0)
    stop_min_correct: int = ranged(0, at_least=0)
    # Generated tokens one problem may use (0: no cap): no new expansion starts
    # once a tree has generated this many, so methods compare at equal cost.
    token_budget: int = ranged(0, at_least=0)
    seed: int = ranged(0, at_least=0)

    def __post_init__(self):
        require([
            *choice_checks(self, {"action": ACTIONS, "reward": REWARDS, "verifier": VERIFIERS,
                                  "reward_tokens": REWARD_TOKENS,
                                  "reflect_wrong": REFLECT_WRONG}),
            *range_checks(self),
            (self.reflect_wrong == "off" or self.needs_gold,
             "reflect_wrong needs a verifier reward (reward verifier or mix): it reflects "
             "on answers the verifier rejected"),
            (self.reflect_wrong == "off" or self.action != "tagged",
             "reflect_wrong is for step and mini_step actions; a tagged search reflects "
             "through its action tree (reflect_under)"),
            (self.reflection_text.strip() != "", "reflection_text must not be empty"),
        ])

    @property
    def needs_gold(self) -> bool:
        """Whether the reward reads the problems' gold answers."""
        return self.reward != "confidence"

    def stop_early(self, rollouts: int, correct: int, generated: int = 0) -> bool:
        """Whether a tree with ``rollouts`` rollouts, ``correct`` correct answers and
        ``generated`` tokens is done."""
        if self.stop_at_correct and correct >= self.stop_at_correct:
            return True
        if self.token_budget and generated >= self.token_budget:
            return True
        return bool(self.stop_after_rollouts and rollouts >= self.stop_after_rollouts
                    and correct >= self.stop_min_correct)


@dataclasses.dataclass(frozen=True)
class JobConfig:
    name: str
    search: SearchConfig = SearchConfig()
    template: str = "marco"  # "marco", "chat" or "none"
    final: str = "most_visited"  # "most_visited", "max_value" or "vote"
    stop: tuple[str, ...] = ("</Output>",)
    description: str = ""
    action_tree: ActionTree | None = None

    def __post_init__(self):
        require([
            *choice_checks(self, {"final": FINALS, "template": TEMPLATES}),
            (all(self.stop), f"stop must be a list of non-empty strings, got {list(self.stop)!r}"),
            ((self.search.action == "tagged") == (self.action_tree is not None),
             'an action_tree section goes with "action": "tagged" in search, and only with it'),
        ])

    @property
    def stops(self) -> tuple[str, ...]:
        """Stop strings for the engine: the config's, and every tag of the action tree."""
        extra = self.action_tree.stops if self.action_tree else ()
        return tuple(dict.fromkeys(self.stop + extra))

    @property
    def instruction(self) -> str:
        """What goes before each question: the action tree's instruction."""
        return self.action_tree.instruction if self.action_tree else ""


def load_job_config(name_or_path: str, overrides: Sequence[str] = (),
                    **search: Any) -> JobConfig:
    """A config by name (``marco_jax/configs/search/NAME.json``) or path.

    ``overrides`` are ``key=value`` / ``search.key=value`` strings (``--set``),
    applied in order; then each keyword argument replaces that field of the
    "search" block (``load_job_config("cot", iterations=2)``). Both are checked
    like the file.
    """
    path, raw = named_config(name_or_path, "search", "search")
    if not isinstance(raw, dict):
        raise MarcoError(f"{path}: expected an object of settings, got {raw!r}")
    origins = apply_overrides(raw, overrides, form="key=value or search.key=value")
    if search:
        block = raw.setdefault("search", {})
        if not isinstance(block, dict):
            raise MarcoError(f"{path}: search must be a section (an object), got {block!r}")
        block.update(search)
        origins |= {f"search.{key}": f"{key}={value!r}" for key, value in search.items()}
    return build(JobConfig, raw, str(path), origins=origins, name=path.stem)
