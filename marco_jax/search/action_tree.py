"""Marco-o1 v2's action tree: which tagged node types a search tree grows.

A node is one tagged text segment (``<thinking>…</thinking>``). Its type says
which child types it gets and how many (``children``, in order: the first
unvisited child is selected first), the texts a generation may start with
(``prefills``, one drawn per expansion so siblings share it, as in v2), the
engine that writes it (``model``: "policy", or "checker" for v2's second
"rubber-duck" model) and whether it ends a path (``terminal``: the answer).
A ``fixed`` type is not generated: its text is a prefill (v2's reflection).

``reflect_under``/``reflection``: after a wrong answer, the nearest ancestor of
type ``reflect_under`` gets ``reflection`` (type → count) new children, so
reflection appears only where a real mistake happened (v2's
``add_wrong_answer_node``).
"""

from __future__ import annotations

import dataclasses
import random

from marco_jax.errors import MarcoError

MODELS = ("policy", "checker")


@dataclasses.dataclass(frozen=True)
class NodeType:
    tag: str  # "thinking" → "<thinking>" … "</thinking>"
    children: dict[str, int] = dataclasses.field(default_factory=dict)
    prefills: tuple[str, ...] = ()
    model: str = "policy"
    terminal: bool = False
    fixed: bool = False

    def __post_init__(self):
        if not self.tag or any(c in self.tag for c in "<>/ "):
            raise MarcoError(f"tag must be a bare name such as 'thinking', got {self.tag!r}")
        if self.model not in MODELS:
            raise MarcoError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.fixed and not self.prefills:
            raise MarcoError(f"fixed type <{self.tag}> needs its texts in prefills")
        if self.terminal and self.children:
            raise MarcoError(f"terminal type <{self.tag}> cannot have children")

    @property
    def open(self) -> str:
        return f"<{self.tag}>"

    @property
    def close(self) -> str:
        return f"</{self.tag}>"

    def prefill(self, rng: random.Random) -> str:
        return rng.choice(self.prefills) if self.prefills else ""

    def text(self, prefill: str, body: str) -> str:
        """The node's text in the path: tags around prefill and generated body, then
        a newline (v2's layout)."""
        return f"{self.open}{prefill}{body}{self.close}\n"


@dataclasses.dataclass(frozen=True)
class ActionTree:
    instruction: str  # before the question in the user turn (v2's base_prompt)
    root: dict[str, int]  # the root's children
    types: dict[str, NodeType]
    reflect_under: str | None = None
    reflection: dict[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        named = {"root": self.root, **{f"types.{n}": t.children for n, t in self.types.items()},
                 "reflection": self.reflection}
        for where, children in named.items():
            for name, count in children.items():
                if name not in self.types:
                    raise MarcoError(f"{where}: unknown node type {name!r} "
                                     f"(types: {', '.join(self.types)})")
                if count < 1:
                    raise MarcoError(f"{where}: {name} count must be >= 1, got {count}")
        if not self.root:
            raise MarcoError("root must name at least one child type")
        if not any(t.terminal for t in self.types.values()):
            raise MarcoError("no terminal type: a path could never reach an answer")
        if (self.reflect_under is None) != (not self.reflection):
            raise MarcoError("reflect_under and reflection go together (both or neither)")
        if self.reflect_under is not None and self.reflect_under not in self.types:
            raise MarcoError(f"reflect_under: unknown node type {self.reflect_under!r}")
        tags = [t.tag for t in self.types.values()]
        if len(set(tags)) != len(tags):
            raise MarcoError(f"tags must be distinct, got {tags}")

    @property
    def stops(self) -> tuple[str, ...]:
        """Every tag of every type: a generated node ends at its own closing tag,
        and also where it starts another node (small models run on into
        ``<double-check>`` without closing ``<thinking>``)."""
        return tuple(tag for t in self.types.values() for tag in (t.open, t.close))

    def node_body(self, generated: str) -> str:
        """A generation cut before the first tag it writes (see ``stops``)."""
        cut = min((i for tag in self.stops if (i := generated.find(tag)) >= 0),
                  default=len(generated))
        return generated[:cut]

    @property
    def models(self) -> set[str]:
        return {t.model for t in self.types.values() if not t.fixed}
