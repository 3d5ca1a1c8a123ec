"""The strict config reader: named-key objects (dicts) and optional sections."""

import dataclasses
import re

import pytest

from marco_jax.errors import MarcoError
from marco_jax.run_config import build


@dataclasses.dataclass(frozen=True)
class Kind:
    tag: str
    children: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Plan:
    kinds: dict[str, Kind] = dataclasses.field(default_factory=dict)
    extra: Kind | None = None


def test_dicts_keep_file_order_and_check_every_value():
    plan = build(Plan, {"kinds": {"b": {"tag": "B", "children": {"a": 2, "b": 1}},
                                  "a": {"tag": "A"}}}, "f.json")
    assert list(plan.kinds) == ["b", "a"]
    assert plan.kinds["b"] == Kind("B", {"a": 2, "b": 1}) and plan.extra is None
    assert build(Plan, {"extra": {"tag": "X"}}, "f.json").extra == Kind("X")
    for values, message in [
            ({"kinds": {"b": {"tag": "B", "children": {"a": "two"}}}},
             "f.json [kinds.b]: children.a must be int, got 'two'"),
            ({"kinds": {"b": {"tga": "B"}}}, "f.json [kinds.b]: unknown key(s) tga"),
            ({"kinds": {"b": {}}}, "f.json [kinds.b]: missing key(s) tag"),
            ({"kinds": ["b"]}, "f.json: kinds must be an object, got ['b']"),
            ({"extra": 3}, "f.json: extra must be a section (an object), got 3")]:
        with pytest.raises(MarcoError, match=re.escape(message)):
            build(Plan, values, "f.json")
