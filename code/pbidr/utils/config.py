"""Typed config trees: each component's settings are a dataclass whose fields carry their default, a
one-line doc and their checks, next to the component's code.

A field is declared with :func:`setting` (a value) or :func:`block` (a nested config). Every config
class derives from :class:`Config`, whose ``__post_init__`` checks each value against its field's
type (bool, int, float, str, list of int) and metadata (``positive``, ``at_most_one``, ``least``,
``choices``, ``entries_positive``), turns an int given for a float field into a float, and then runs
the class's own ``check`` for rules that tie fields together. So a config is valid however it was
made: by :func:`build` from parsed HOCON (the one loader, ``pbidr.training.conf``), or in code.

:func:`build` refuses unknown keys (with a near-miss hint) and names the full dotted key of any bad
value; :func:`to_dict` and :func:`describe` give the tree back as plain values or as commented HOCON.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import typing
from collections.abc import Mapping
from typing import Any, Callable, Iterator

from pbidr.errors import PbidrError

_LEAF_TYPES = (bool, int, float, str)


def setting(default: Any, doc: str, *, positive: bool = False, at_most_one: bool = False, least: int | None = None,
            choices: tuple | None = None, entries_positive: bool = False) -> Any:
    """A config value with its default and one-line doc. Numbers must be >= 0 (no setting means anything
    negative); ``positive``: > 0; ``least``: >= this; ``at_most_one``: <= 1; ``choices``: one of these;
    ``entries_positive``: a list's entries > 0 (widths, sizes; other lists hold indices or steps, >= 0)."""
    meta = {"doc": doc, "positive": positive, "at_most_one": at_most_one, "least": least, "choices": choices,
            "entries_positive": entries_positive}
    if isinstance(default, list):
        items = list(default)
        return dataclasses.field(default_factory=lambda: list(items), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def block(factory: Callable[[], Any], doc: str) -> Any:
    """A nested config (``factory`` builds its default: the class, or a function returning one)."""
    return dataclasses.field(default_factory=factory, metadata={"doc": doc})


class SettingError(ValueError, PbidrError):
    """A value that does not fit its field: ``key`` is its dotted name below the config it belongs to."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class UnknownKeyError(PbidrError):
    """A key the config tree does not have."""


def did_you_mean(key: str, known) -> str:
    """' (did you mean batch_size?)' for a near miss of one of ``known``, else ''."""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp) and issubclass(tp, Config)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _checked(name: str, value: Any, tp: Any, meta: Mapping[str, Any]) -> Any:
    """``value`` as field ``name`` of type ``tp`` holds it (an int becomes a float for a float field),
    or SettingError."""
    def bad(why: str) -> None:
        raise SettingError(name, f"{name} = {value!r}: {why}")

    choices = meta.get("choices")
    if _is_config(tp):
        if not isinstance(value, tp):
            bad("expected a block { ... }")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            bad("expected true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            bad(f"expected one of {', '.join(choices)}" if choices else "expected a string")
        if choices and value not in choices:
            bad(f"expected one of {', '.join(choices)}")
        return value
    if typing.get_origin(tp) is list:
        if not isinstance(value, list):
            bad("expected a list like [1, 2]")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            bad("expected a list of integers")
        least = 1 if meta.get("entries_positive") else 0
        if any(v < least for v in value):
            bad(f"every entry must be >= {least}")
        return [int(v) for v in value]
    if tp not in (int, float):
        raise TypeError(f"{name}: a config field must be bool, int, float, str, list[int] or a Config, not {tp}")
    if not _is_number(value):
        bad("expected a number")
    if tp is int and not isinstance(value, int):
        bad("expected an integer")
    if not math.isfinite(float(value)):
        bad("expected a finite number")
    if choices and value not in choices:
        bad(f"expected one of {', '.join(str(c) for c in choices)}")
    if meta.get("positive") and not value > 0:
        bad("must be > 0")
    if value < 0:
        bad("must be >= 0")
    if meta.get("least") is not None and value < meta["least"]:
        bad(f"must be >= {meta['least']}")
    if meta.get("at_most_one") and value > 1:
        bad("must be in [0, 1]")
    return float(value) if tp is float else int(value)


class Config:
    """Base of every config dataclass: values are checked (and ints turned into floats where a float is
    declared) when an instance is made; ``check`` is a subclass's hook for rules across fields (raise
    :class:`SettingError` naming the field)."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            value = _checked(f.name, getattr(self, f.name), hints[f.name], f.metadata)
            object.__setattr__(self, f.name, value)
        self.check()

    def check(self) -> None:
        """Rules that tie fields together (none by default)."""


def build(cls: type, data: Any, where: str) -> Any:
    """An instance of config class ``cls`` from ``data`` (a mapping of its keys; missing keys take the
    defaults). ``where`` is the dotted name of the block (``model.ray_tracer``). Raises
    :class:`UnknownKeyError` for a key ``cls`` lacks and :class:`SettingError` (``key`` = the full dotted
    name) for a value that does not fit."""
    if not isinstance(data, Mapping):
        raise SettingError(where, f"{where} = {data!r}: expected a block {{ ... }}")
    hints = _hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise UnknownKeyError(f"unknown key {where}.{key}{did_you_mean(key, known)} "
                                  f"(known in {where}: {', '.join(sorted(known))})")
    values = {}
    for name, value in data.items():
        tp = hints[name]
        if _is_config(tp):
            # a nested block starts from its field's default (which may differ from the class's)
            value = build(tp, {**to_dict(known[name].default_factory()), **value} if isinstance(value, Mapping)
                          else value, f"{where}.{name}")
        values[name] = value
    try:
        return cls(**values)
    except SettingError as err:
        raise SettingError(f"{where}.{err.key}", f"{where}.{err}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """The tree as plain nested dicts, lists and scalars, in field order."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out[f.name] = to_dict(value) if isinstance(value, Config) else (list(value) if isinstance(value, list) else value)
    return out


def leaves(config: Any, where: str = "") -> Iterator[tuple[str, Any, dataclasses.Field]]:
    """(dotted key, value, field) of every value of the tree, in field order."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, Config):
            yield from leaves(value, f"{where}{f.name}.")
        else:
            yield f"{where}{f.name}", value, f


def hocon_value(value: Any) -> str:
    """A value as HOCON writes it (what --set takes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value.replace("_", "").isalnum() else '"' + value.replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(hocon_value(v) for v in value) + "]"
    return repr(value)


def describe(config: Any, default: Any = None, indent: int = 0) -> list[str]:
    """HOCON lines of ``config`` with each field's doc as a comment above it; a value that differs from
    ``default`` (a tree of the same class) says the default."""
    lines = []
    pad = " " * indent
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        base = getattr(default, f.name) if default is not None else None
        doc = f.metadata.get("doc", "")
        if doc:
            lines.append(f"{pad}# {doc}")
        if isinstance(value, Config):
            lines.append(f"{pad}{f.name} {{")
            lines += describe(value, base, indent + 4)
            lines.append(f"{pad}}}")
            continue
        note = f"  # default: {hocon_value(base)}" if default is not None and value != base else ""
        lines.append(f"{pad}{f.name} = {hocon_value(value)}{note}")
    return lines
