"""A SUMO scenario as its ``.sumocfg`` describes it."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from citybrain.errors import ScenarioError


@dataclass(frozen=True, slots=True)
class Scenario:
    config: Path
    net_file: Path
    route_files: tuple[Path, ...]
    additional_files: tuple[Path, ...]
    begin_s: float
    end_s: float
    step_length_s: float

    @property
    def name(self) -> str:
        return self.config.name.removesuffix(".sumocfg")


def load_scenario(config: Path) -> Scenario:
    """Read the files and the time window a ``.sumocfg`` names; fail with a clear message."""
    if not config.is_file():
        raise ScenarioError(f"scenario file not found: {config}")
    try:
        root = ET.parse(config).getroot()
    except ET.ParseError as exc:
        raise ScenarioError(f"{config}: not a readable SUMO configuration ({exc})") from None
    values = {child.tag: child.get("value", "") for section in root for child in section}
    values.update({child.tag: child.get("value", "") for child in root if child.get("value")})
    base = config.parent
    net = values.get("net-file") or values.get("n")
    if not net:
        raise ScenarioError(f"{config}: no net-file in the configuration")
    net_file = (base / net).resolve()
    if not net_file.is_file():
        raise ScenarioError(f"{config}: network file not found: {net_file}")
    routes = _files(base, values.get("route-files") or values.get("r") or "")
    adds = _files(base, values.get("additional-files") or values.get("a") or "")
    for f in routes + adds:
        if not f.is_file():
            raise ScenarioError(f"{config}: file not found: {f}")
    begin = _seconds(config, "begin", values.get("begin", "0"))
    end = _seconds(config, "end", values.get("end", "3600"))
    if end <= begin:
        raise ScenarioError(f"{config}: end ({end}) must be after begin ({begin})")
    step = _seconds(config, "step-length", values.get("step-length", "1"))
    return Scenario(config.resolve(), net_file, routes, adds, begin, end, step)


def _files(base: Path, value: str) -> tuple[Path, ...]:
    names = [v for v in value.replace(",", " ").split() if v]
    return tuple((base / v).resolve() for v in names)


def _seconds(config: Path, key: str, value: str) -> float:
    try:
        if ":" in value:
            parts = [float(p) for p in value.split(":")]
            total = 0.0
            for p in parts:
                total = total * 60 + p
            return total
        return float(value)
    except ValueError:
        raise ScenarioError(f"{config}: {key} is not a time: {value!r}") from None
