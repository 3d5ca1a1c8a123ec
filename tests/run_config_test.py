"""The strict config reader: named-key objects (dicts), optional sections, numeric
ranges, and errors that name the override a bad value came from."""

import dataclasses
import re
import types
import typing

import pytest

from marco_jax.errors import MarcoError
from marco_jax.run_config import RANGE, apply_overrides, build, range_checks, ranged
from marco_jax.search.config import JobConfig
from marco_jax.train.config import TrainConfig


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


@dataclasses.dataclass(frozen=True)
class Rates:
    rate: float = ranged(0.1, above=0)
    share: float = ranged(0.5, at_least=0, at_most=1)
    epochs: int | None = ranged(None, at_least=1)


@dataclasses.dataclass(frozen=True)
class Run:
    rates: Rates = Rates()
    steps: int = ranged(10, at_least=1)


@pytest.mark.parametrize("values, message", [
    ({"steps": 0}, "f.json: steps must be >= 1, got 0"),
    ({"rates": {"rate": -0.003}}, "f.json [rates]: rate must be > 0, got -0.003"),
    ({"rates": {"share": 1.5}}, "f.json [rates]: share must be in [0, 1], got 1.5"),
    ({"rates": {"rate": float("inf")}}, "rate must be a finite number > 0, got inf"),
    ({"rates": {"share": float("nan")}}, "share must be a finite number in [0, 1], got nan"),
    ({"rates": {"epochs": 0}}, "epochs must be >= 1, got 0"),
])
def test_numbers_out_of_their_range_are_refused(values, message):
    with pytest.raises(MarcoError, match=re.escape(message)):
        build(Run, values, "f.json")
    assert build(Run, {"rates": {"epochs": None, "rate": 2}}, "f.json").rates == Rates(2.0)


def test_a_bad_override_is_blamed_not_the_file():
    raw = {"rates": {"rate": 0.5}, "steps": 3}
    origins = apply_overrides(raw, ["rates.rate=-0.003", "steps=4", "steps=5"])
    assert origins == {"rates.rate": "--set rates.rate=-0.003", "steps": "--set steps=5"}
    with pytest.raises(MarcoError, match=re.escape(
            "--set rates.rate=-0.003: rate must be > 0, got -0.003")):
        build(Run, raw, "f.json", origins=origins)
    for overrides, message in [
            (["rtes.rate=1"], "--set rtes.rate=1: unknown key(s) rtes (known: rates, steps)"),
            (['rates={"share": 2}'], '--set rates={"share": 2}: share must be in [0, 1], got 2'),
            (["steps=x"], "--set steps=x: steps must be int, got 'x'")]:
        raw = {"rates": {"rate": 0.5}, "steps": 3}
        with pytest.raises(MarcoError, match=re.escape(message)):
            build(Run, raw, "f.json", origins=apply_overrides(raw, overrides))


def test_range_checks_cover_configs_built_in_code():
    assert all(ok for ok, _ in range_checks(Run()))
    failed = [message for ok, message in range_checks(Run(Rates(share=-1.0), steps=0)) if not ok]
    assert failed == ["rates.share must be in [0, 1], got -1.0", "steps must be >= 1, got 0"]
    with pytest.raises(TypeError):
        ranged(1)


def numeric_fields(cls: type, prefix: str = "") -> dict[str, dataclasses.Field]:
    """Every int or float field of a config dataclass and of its sections, by dotted name
    (a dict's numbers, such as an action tree's child counts, are its class's to check)."""
    found = {}
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        alternatives = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        for a in alternatives:
            if dataclasses.is_dataclass(a):
                found |= numeric_fields(a, f"{prefix}{field.name}.")
        if int in alternatives or float in alternatives:
            found[prefix + field.name] = field
    return found


@pytest.mark.parametrize("config", [TrainConfig, JobConfig])
def test_every_numeric_setting_declares_a_range(config):
    fields = numeric_fields(config)
    assert {"train.learning_rate", "search.temperature", "dpo.beta"} & set(fields)
    assert [name for name, f in fields.items() if RANGE not in f.metadata] == []
    # ... and its default lies in it.
    default = config(name="default") if config is TrainConfig else JobConfig(name="default")
    assert [message for ok, message in range_checks(default) if not ok] == []
