"""Search job configs: named JSON files in ``marco_jax/configs/search/`` (or a path).

A file holds ``description``, ``template`` (marco, chat or none), ``final``
(most_visited, max_value or vote), ``stop`` (a list of stop strings) and a
``search`` object with :class:`SearchConfig`'s fields. Keys and types are
checked by :mod:`marco_jax.settings`, the reader training configs use: a
misspelt key or a wrong type is an error naming the key and the file.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from marco_jax.errors import MarcoError
from marco_jax.files import named_config
from marco_jax.settings import apply_overrides, build

FINALS = ("most_visited", "max_value", "vote")
TEMPLATES = ("marco", "chat", "none")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    action: str = "mini_step"  # "mini_step" or "step"
    mini_step_tokens: int = 64
    step_delimiter: str = "\n\n"
    step_max_tokens: int = 256  # cap on one step action
    children: int = 4  # continuations sampled per expansion
    iterations: int = 8
    c_uct: float = 1.0
    call_tokens: int = 512  # new tokens per call: action + rollout
    max_tokens: int = 1024  # generated tokens on a path (beyond the prompt)
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 0
    reward_tokens: str = "rollout"  # "rollout", "action" or "both"
    reflection: bool = False
    seed: int = 0

    def __post_init__(self):
        checks = [
            (self.action in ("mini_step", "step"), f"action must be mini_step or step, got {self.action!r}"),
            (self.reward_tokens in ("rollout", "action", "both"),
             f"reward_tokens must be rollout, action or both, got {self.reward_tokens!r}"),
            (self.children >= 1, f"children must be >= 1, got {self.children}"),
            (self.iterations >= 1, f"iterations must be >= 1, got {self.iterations}"),
            (self.mini_step_tokens >= 1, "mini_step_tokens must be >= 1"),
            (self.call_tokens >= 1 and self.max_tokens >= 1, "token budgets must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise MarcoError(message)


@dataclasses.dataclass(frozen=True)
class JobConfig:
    name: str
    search: SearchConfig = SearchConfig()
    template: str = "marco"  # "marco", "chat" or "none"
    final: str = "most_visited"  # "most_visited", "max_value" or "vote"
    stop: tuple[str, ...] = ("</Output>",)
    description: str = ""

    def __post_init__(self):
        if self.final not in FINALS:
            raise MarcoError(f"final must be one of {', '.join(FINALS)}, got {self.final!r}")
        if self.template not in TEMPLATES:
            raise MarcoError(f"template must be one of {', '.join(TEMPLATES)}, "
                             f"got {self.template!r}")
        if not all(self.stop):
            raise MarcoError(f"stop must be a list of non-empty strings, got {list(self.stop)!r}")


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
    apply_overrides(raw, overrides, form="key=value or search.key=value")
    if search:
        block = raw.setdefault("search", {})
        if not isinstance(block, dict):
            raise MarcoError(f"{path}: search must be a section (an object), got {block!r}")
        block.update(search)
    return build(JobConfig, raw, str(path), name=path.stem)
