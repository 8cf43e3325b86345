"""Reading TOML files with errors that name the file, and typed frozen settings from them.

``from_mapping(cls, table, source, prefix)`` builds a dataclass from a TOML table, checking
every key and type: an unknown key, or a value of the wrong type or range, is a
``ConfigError`` naming ``file: section.key``. Fields may be dataclasses (sections), enums,
numbers, strings, booleans, optional values, and ``Mapping[str, X]`` (a table of tables,
such as one per lot).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import tomllib
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from citybrain.errors import ConfigError

T = TypeVar("T")


def parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML ({exc})") from None


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """The parsed file; ``what`` names it in the error when it is missing ("tariff file")."""
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    return parse_toml(path.read_text(encoding="utf-8"), str(path))


def from_mapping(cls: type[T], data: Any, source: str, prefix: str) -> T:
    """Build dataclass ``cls`` from a TOML table, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'file'} must be a table")
    assert dataclasses.is_dataclass(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            known = ", ".join(fields)
            raise ConfigError(f"{source}: unknown key {prefix}{key} (known: {known})")
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.init and name not in data:
            raise ConfigError(f"{source}: {prefix}{name} is missing")
    values: dict[str, Any] = {}
    for name, value in data.items():
        values[name] = _convert(hints[name], value, source, f"{prefix}{name}")
    try:
        return cls(**values)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _convert(kind: Any, value: Any, source: str, key: str) -> Any:
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        return from_mapping(kind, value, source, f"{key}.")
    if isinstance(kind, type) and issubclass(kind, Enum):
        try:
            return kind(value)
        except ValueError:
            choices = ", ".join(str(m.value) for m in kind)
            raise ConfigError(f"{source}: {key} must be one of {choices}, not {value!r}") from None
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{source}: {key} must be a number, not {value!r}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {key} must be a whole number, not {value!r}")
    if kind is bool or kind is str:
        if isinstance(value, kind):
            return value
        raise ConfigError(f"{source}: {key} must be a {kind.__name__}, not {value!r}")
    if typing.get_origin(kind) in (dict, collections.abc.Mapping):
        _, inner = typing.get_args(kind)
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a table")
        return {
            name: _convert(inner, item, source, f"{key}.{name}") for name, item in value.items()
        }
    if isinstance(kind, types.UnionType) and type(None) in typing.get_args(kind):
        inner = next(a for a in typing.get_args(kind) if a is not type(None))
        return _convert(inner, value, source, key)
    raise ConfigError(f"{source}: {key} has an unsupported type")
