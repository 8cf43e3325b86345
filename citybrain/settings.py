"""Typed, frozen settings loaded once from TOML; a bad file fails naming the key.

``load_settings(path)`` reads a file shaped like ``configs/citybrain.toml``. Every section
and key is optional (the defaults are embedded), but an unknown key, or a value of the wrong
type or range, stops the program with ``file: section.key ...``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from citybrain.control.actuated import ActuatedTiming
from citybrain.control.envelope import EnvelopeTiming
from citybrain.control.escort import EscortSettings
from citybrain.field.cabinet import CabinetSettings
from citybrain.netmodel.layout import DetectorPlacement
from citybrain.sensornoise import GpsSettings, SensorSettings
from citybrain.tomlfile import from_mapping, read_toml


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
