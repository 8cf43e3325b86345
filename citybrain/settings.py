"""Typed, frozen settings loaded once from TOML; a bad file fails naming the key.

``load_settings(path)`` reads a file shaped like ``configs/citybrain.toml``. Every section
and key is optional (the defaults are embedded), but an unknown key, or a value of the wrong
type or range, stops the program with ``file: section.key ...``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from citybrain.control.actuated import ActuatedTiming
from citybrain.control.envelope import EnvelopeTiming
from citybrain.control.escort import EscortSettings
from citybrain.errors import ConfigError
from citybrain.field.cabinet import CabinetSettings
from citybrain.netmodel.layout import DetectorPlacement
from citybrain.sensornoise import GpsSettings, SensorSettings
from citybrain.tomlfile import read_toml

T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    sensors: SensorSettings = field(default_factory=SensorSettings)
    envelope: EnvelopeTiming = field(default_factory=EnvelopeTiming)
    actuated: ActuatedTiming = field(default_factory=ActuatedTiming)
    detectors: DetectorPlacement = field(default_factory=DetectorPlacement)
    escort: EscortSettings = field(default_factory=EscortSettings)
    gps: GpsSettings = field(default_factory=GpsSettings)
    cabinet: CabinetSettings = field(default_factory=CabinetSettings)


def load_settings(path: Path | None) -> Settings:
    if path is None:
        return Settings()
    return from_mapping(Settings, read_toml(path, "configuration file"), str(path), "")


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
    if isinstance(kind, types.UnionType) and type(None) in typing.get_args(kind):
        inner = next(a for a in typing.get_args(kind) if a is not type(None))
        return _convert(inner, value, source, key)
    raise ConfigError(f"{source}: {key} has an unsupported type")
