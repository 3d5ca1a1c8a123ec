"""One strict reader for typed run configs (training and search): named configs
shipped in ``marco_jax/configs/<kind>/`` (package data, linked from the top-level
``configs/``) or a path, read into typed dataclasses.

A config is a (nested) frozen dataclass; a JSON object is read into it with
every key and type checked, so that a misspelt key or a wrong type is an
error naming the key and where it came from instead of a silently ignored
setting. Field types may be ``int``, ``float``, ``bool``, ``str``, ``None``,
``tuple[str, ...]`` (given as a JSON list), unions of these (``int | None``),
another dataclass (a nested object, a "section"; ``Section | None`` when it
is optional), or ``dict[str, X]`` with X any of these (an object whose keys
are names the config chooses, kept in file order). An ``int`` is accepted
for a ``float`` field; a ``bool`` is never accepted for an ``int`` one. A
numeric field declares the values it accepts with :func:`ranged` (a negative
learning rate would otherwise train, just badly), checked as it is read.

``apply_overrides`` edits the raw dict with ``section.key=value`` strings
(``--set`` on the command line) before it is built, so overrides are checked
exactly like the file; it returns where each overridden value came from, so
that an error in one names the override instead of the file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import pathlib
import types
import typing
from typing import Any, Iterable, Mapping, TypeVar

from marco_jax.errors import MarcoError

T = TypeVar("T")
CONFIGS = pathlib.Path(__file__).resolve().parent / "configs"
RANGE = "range"  # the field metadata key of a numeric setting's Range


@dataclasses.dataclass(frozen=True)
class Range:
    """The finite numbers a setting accepts; each bound inclusive, exclusive or absent."""

    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    below: float | None = None

    def __contains__(self, value: float) -> bool:
        return (_finite(value)
                and (self.at_least is None or value >= self.at_least)
                and (self.above is None or value > self.above)
                and (self.at_most is None or value <= self.at_most)
                and (self.below is None or value < self.below))

    def __str__(self) -> str:
        low = (("[", ">=", self.at_least) if self.at_least is not None
               else ("(", ">", self.above) if self.above is not None else None)
        high = (("]", "<=", self.at_most) if self.at_most is not None
                else (")", "<", self.below) if self.below is not None else None)
        if low and high:
            return f"in {low[0]}{low[2]}, {high[2]}{high[0]}"
        _, sign, bound = low or high
        return f"{sign} {bound}"

    def error(self, key: str, value: float) -> str:
        """The one-line refusal of ``value`` for ``key``."""
        return f"{key} must be {'' if _finite(value) else 'a finite number '}{self}, got {value!r}"


def _finite(value: float) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def ranged(default: Any, *, at_least: float | None = None, above: float | None = None,
           at_most: float | None = None, below: float | None = None) -> Any:
    """A numeric dataclass field: its default and the :class:`Range` it must lie in
    (at least one bound)."""
    bounds = Range(at_least=at_least, above=above, at_most=at_most, below=below)
    if bounds == Range():
        raise TypeError("ranged() needs a bound")
    return dataclasses.field(default=default, metadata={RANGE: bounds})


def range_checks(config: Any, prefix: str = "") -> list[tuple[bool, str]]:
    """A check per ranged field of ``config`` and of its sections (None is not checked),
    for :func:`marco_jax.errors.require`, so a config built in code is refused like a file."""
    checks = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            checks += range_checks(value, f"{prefix}{field.name}.")
        elif (bounds := field.metadata.get(RANGE)) is not None and value is not None:
            checks.append((value in bounds, bounds.error(prefix + field.name, value)))
    return checks


def named_config(name_or_path: str, kind: str, what: str) -> tuple[pathlib.Path, dict[str, Any]]:
    """The JSON of ``marco_jax/configs/<kind>/NAME.json`` (or of a path) and where it came from;
    ``what`` names the kind of config in errors."""
    directory = CONFIGS / kind
    path = pathlib.Path(name_or_path)
    if not path.suffix:
        path = directory / f"{name_or_path}.json"
    if not path.is_file():
        known = sorted(p.stem for p in directory.glob("*.json"))
        raise MarcoError(f"no {what} config {name_or_path!r} (known: {', '.join(known)})")
    try:
        return path, json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise MarcoError(f"{path}: not valid JSON ({e})") from None


def parse_value(text: str) -> Any:
    """JSON where it parses (numbers, true, null, lists), else the raw string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def choice_checks(config: Any, table: Mapping[str, tuple[str, ...]]) -> list[tuple[bool, str]]:
    """A check per enumerated setting (``table``: dotted key -> allowed values), for
    :func:`marco_jax.errors.require`; its error lists the choices and the value given."""
    checks = []
    for key, allowed in table.items():
        value = operator.attrgetter(key)(config)
        listed = (f"{allowed[0]} or {allowed[1]}" if len(allowed) == 2
                  else f"one of {', '.join(allowed)}")
        checks.append((value in allowed, f"{key} must be {listed}, got {value!r}"))
    return checks


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str],
                    form: str = "section.key=value") -> dict[str, str]:
    """Set ``[section.]key=value`` strings into ``raw`` (in place, in order). Values are
    JSON where they parse, else the raw string; ``form`` says what an override should
    look like in the error for a malformed one. Returns each set key's origin
    (``train.steps`` -> ``--set train.steps=5``, the last one), for :func:`build`."""
    origins = {}
    for item in overrides:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise MarcoError(f"--set {item!r}: expected {form}")
        *sections, leaf = key.split(".")
        node = raw
        for s in sections:
            node = node.setdefault(s, {})
            if not isinstance(node, dict):
                raise MarcoError(f"--set {item!r}: {s} is not a section")
        node[leaf] = parse_value(value)
        origins[key] = f"--set {item}"
    return origins


def build(cls: type[T], values: Mapping[str, Any], where: str, *,
          origins: Mapping[str, str] | None = None, **given: Any) -> T:
    """``cls`` (a dataclass) from ``values``, every key, type and range checked.

    ``where`` names the source (a file) in errors; nested sections are named
    after it in brackets (``tiny_sft.json [train]: ...``). ``origins`` (dotted key
    -> what set it, from :func:`apply_overrides`) name instead the override a bad
    value came from. ``given`` are fields the caller fills in (such as a config's
    name): they are not accepted from ``values``. An error raised by the dataclass
    itself (``__post_init__``) is prefixed with ``where`` too.
    """
    return _build(cls, values, where, "", given, origins or {})


def _origin(origins: Mapping[str, str], dotted: str, at: str) -> str:
    """What to blame for the value at ``dotted``: the override that set it or a section
    above it, or one below it (an unknown section an override created); else ``at``."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        if (origin := origins.get(".".join(parts[:n]))) is not None:
            return origin
    return next((o for key, o in origins.items() if key.startswith(dotted + ".")), at)


def _build(cls: type, values: Any, where: str, section: str, given: dict[str, Any],
           origins: Mapping[str, str]):
    at = f"{where} [{section}]" if section else where
    if not isinstance(values, Mapping):
        raise MarcoError(f"{at}: expected an object of settings, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    known = sorted(name for name in fields if name not in given)
    unknown = sorted(set(values) - set(known))
    if unknown:
        blamed = next((b for key in unknown if (b := _origin(
            origins, f"{section}.{key}" if section else key, at)) != at), at)
        raise MarcoError(f"{blamed}: unknown key(s) {', '.join(unknown)} "
                         f"(known: {', '.join(known)})")
    required = sorted(f.name for f in dataclasses.fields(cls)
                      if f.default is dataclasses.MISSING
                      and f.default_factory is dataclasses.MISSING and f.name not in given)
    if missing := [k for k in required if k not in values]:
        raise MarcoError(f"{at}: missing key(s) {', '.join(missing)}")
    checked = dict(given)
    for key, value in values.items():
        inner = f"{section}.{key}" if section else key
        blamed = _origin(origins, inner, at)
        checked[key] = _value(hints[key], key, value, where, inner, blamed, origins)
        bounds = fields[key].metadata.get(RANGE)
        if bounds is not None and checked[key] is not None and checked[key] not in bounds:
            raise MarcoError(f"{blamed}: {bounds.error(key, checked[key])}")
    try:
        return cls(**checked)
    except MarcoError as error:
        raise MarcoError(f"{at}: {error}") from None


def _value(hint: Any, key: str, value: Any, where: str, inner: str, at: str,
           origins: Mapping[str, str]) -> Any:
    """One field's value: a section is built, a dict's values checked one by one;
    ``at`` names where the value came from."""
    section = next((a for a in _alternatives(hint) if dataclasses.is_dataclass(a)), None)
    if section is not None and not (value is None and type(None) in _alternatives(hint)):
        if not isinstance(value, Mapping):
            raise MarcoError(f"{at}: {key} must be a section (an object), got {value!r}")
        return _build(section, value, where, inner, {}, origins)
    if typing.get_origin(hint) is dict:
        if not isinstance(value, Mapping):
            raise MarcoError(f"{at}: {key} must be an object, got {value!r}")
        _, element = typing.get_args(hint)
        return {str(name): _value(element, f"{key}.{name}", item, where, f"{inner}.{name}", at,
                                  origins)
                for name, item in value.items()}
    return _check(hint, key, value, at)


def _alternatives(hint: Any) -> tuple:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _type_name(a: Any) -> str:
    if a is type(None):
        return "null"
    if typing.get_origin(a) is tuple:
        return f"a list of {typing.get_args(a)[0].__name__}"
    return a.__name__


def _check(hint: Any, key: str, value: Any, at: str) -> Any:
    """``value`` as the field's type (an int made float, a list made a tuple), or an
    error naming ``key``."""
    for a in _alternatives(hint):
        if a is type(None):
            if value is None:
                return None
        elif a is bool:
            if isinstance(value, bool):
                return value
        elif a is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif a is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif a is str:
            if isinstance(value, str):
                return value
        elif typing.get_origin(a) is tuple:
            element, *rest = typing.get_args(a)
            if rest != [Ellipsis] or element is not str:
                raise TypeError(f"unsupported config field type {hint!r} ({key})")
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                return tuple(value)
        else:
            raise TypeError(f"unsupported config field type {hint!r} ({key})")
    names = " or ".join(_type_name(a) for a in _alternatives(hint))
    raise MarcoError(f"{at}: {key} must be {names}, got {value!r}")
