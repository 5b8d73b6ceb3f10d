"""One validator for configuration tables: profile ``[options]`` and ``[quantization]``,
recipe ``[quantization]``, ``compress(quantization=...)``.

A schema maps each key to a :class:`Field` (or, for short, a type or a tuple of allowed
values). :func:`check_table` checks a table against it and names the file and the key on any
error: an unknown key (with the closest known one), a wrong type, a value out of range::

    >>> check_table({"threads": 2}, {"threads": Field(int, low=1)}, where="a.toml [options]")
    {'threads': 2}
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = ["Field", "check_table"]


@dataclass(frozen=True)
class Field:
    """One key of a table: its type, and optionally its allowed values or its range.

    ``kind`` is ``bool``, ``int``, ``float`` (an int is accepted), ``str``, ``list`` (of
    ``item``), ``dict`` or ``object`` (any type: ``choices`` then say which values, compared
    with their types, e.g. ``(False, True, "auto")``); ``low``/``high`` bound numbers
    (``low_open``: strictly above ``low``); ``optional``: ``None`` is accepted too (from
    Python; TOML has no null); ``off``: ``false`` is accepted and read as ``None`` (a check
    switched off).
    """

    kind: type
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    item: type = str
    optional: bool = False
    off: bool = False


def _field(spec: Field | type | tuple[Any, ...]) -> Field:
    if isinstance(spec, Field):
        return spec
    if isinstance(spec, tuple):
        return Field(type(spec[0]), choices=spec)
    return Field(spec)


def _type_ok(value: Any, kind: type) -> bool:
    if kind is object:  # any type; the choices say which values
        return True
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    if kind is list:  # TOML arrays; tuples from Python
        return isinstance(value, (list, tuple))
    return isinstance(value, kind)


def is_choice(value: Any, choices: tuple[Any, ...]) -> bool:
    """``value`` is one of ``choices``, type included (``1`` is not ``true``)."""
    return any(type(value) is type(c) and value == c for c in choices)


def _shown(value: Any) -> str:
    """A value as a TOML file writes it (``true``, ``"auto"``)."""
    return str(value).lower() if isinstance(value, bool) else repr(value)


def _problem(name: str, value: Any, spec: Field) -> str | None:
    """What is wrong with ``value`` for key ``name``, or None."""
    if (value is None and spec.optional) or (value is False and spec.off):
        return None
    if not _type_ok(value, spec.kind):
        return (f"{name!r} must be a {spec.kind.__name__}"
                f"{' (or false to switch it off)' if spec.off else ''}, "
                f"got {type(value).__name__} {value!r}")
    if spec.kind is list and not all(_type_ok(v, spec.item) for v in value):
        return f"{name!r} must be a list of {spec.item.__name__}, got {value!r}"
    if spec.choices and not is_choice(value, spec.choices):
        return (f"{name} = {_shown(value)} is not one of "
                f"{', '.join(_shown(c) for c in spec.choices)}")
    if spec.kind in (int, float):
        if isinstance(value, float) and math.isnan(value):
            return f"{name} = {value!r} must be a number"
        if spec.low is not None and (value <= spec.low if spec.low_open else value < spec.low):
            return (f"{name} = {value!r} must be {'above' if spec.low_open else 'at least'} "
                    f"{spec.low:g}")
        if spec.high is not None and value > spec.high:
            return f"{name} = {value!r} must be at most {spec.high:g}"
    return None


def check_table(table: Mapping[str, Any], schema: Mapping[str, Field | type | tuple[Any, ...]],
                *, where: str, prefix: str = "") -> dict[str, Any]:
    """``table`` as a dict once every key is known and every value fits ``schema`` (ints
    given for ``float`` keys become floats).

    ``where`` names the file and the table (e.g. ``"target profile a.toml [options]"``); a
    problem raises :class:`~edgekit.errors.ConfigError` naming it and the key (as
    ``prefix`` + key, e.g. ``tolerance.max_abs``).
    """
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: must be a table, got {type(table).__name__}")
    for key, _value in table.items():
        if key not in schema:
            close = difflib.get_close_matches(str(key), list(schema), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"{where}: unknown key {prefix + str(key)!r}",
                              hint=hint + (f"known keys: {', '.join(sorted(schema))}"
                                           if schema else "this table takes no keys"))
    out = dict(table)
    for key, value in table.items():
        spec = _field(schema[key])
        problem = _problem(prefix + key, value, spec)
        if problem is not None:
            raise ConfigError(f"{where}: {problem}")
        if value is False and spec.off:
            out[key] = None
        elif spec.kind is float and isinstance(value, int) and not isinstance(value, bool):
            out[key] = float(value)
    return out
