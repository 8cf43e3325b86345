"""A SUMO scenario as its ``.sumocfg`` describes it: files, time window and every other option."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from citybrain.errors import ScenarioError

NO_END_HORIZON_S = 86400.0
"""How long a scenario without an ``end`` may run at most; like SUMO, the run stops earlier,
as soon as every vehicle has left and none is left to load."""

_ALIASES = {
    "n": "net-file",
    "r": "route-files",
    "a": "additional-files",
    "b": "begin",
    "e": "end",
    "l": "log",
    "v": "verbose",
    "W": "no-warnings",
    "c": "configuration-file",
}
_UNSUPPORTED = {
    "mesosim": (
        "the mesoscopic model (citybrain controls signals of the microscopic model)",
        ("", "false", "0"),
    ),
    "remote-port": (
        "a TraCI port of the scenario's own (the harness is the TraCI client)",
        ("", "0", "-1"),
    ),
    "num-clients": (
        "TraCI clients of the scenario's own (the harness is the TraCI client)",
        ("", "0", "1"),
    ),
}
"""Options citybrain cannot honour: why, and the values that mean they are not in use."""


@dataclass(frozen=True, slots=True)
class Scenario:
    config: Path
    net_file: Path
    route_files: tuple[Path, ...]
    additional_files: tuple[Path, ...]
    begin_s: float
    end_s: float
    step_length_s: float
    end_given: bool = True
    """False when the configuration has no ``end``: the run lasts until every vehicle has
    left (as SUMO runs it), at most ``NO_END_HORIZON_S`` after ``begin_s``."""
    options: Mapping[str, str] = field(default_factory=dict)
    """Every option the configuration sets, by SUMO's long name, as written."""

    @property
    def name(self) -> str:
        return self.config.name.removesuffix(".sumocfg")

    @property
    def window_note(self) -> str:
        """What time window a run uses, in one line."""
        if self.end_given:
            return f"{self.begin_s:g}-{self.end_s:g} s (the configuration's window)"
        return (
            f"from {self.begin_s:g} s until every vehicle has left (the configuration has no "
            f"end; at most {NO_END_HORIZON_S:g} s)"
        )


def load_scenario(config: Path) -> Scenario:
    """Read the files, the time window and the options of a ``.sumocfg``; fail in one line."""
    if not config.is_file():
        raise ScenarioError(f"scenario file not found: {config}")
    try:
        root = ET.parse(config).getroot()
    except ET.ParseError as exc:
        raise ScenarioError(f"{config}: not a readable SUMO configuration ({exc})") from None
    values: dict[str, str] = {}
    for elem in root.iter():
        if elem is root or elem.get("value") is None:
            continue
        values[_ALIASES.get(elem.tag, elem.tag)] = elem.get("value", "")
    for key, (why, unused) in _UNSUPPORTED.items():
        if values.get(key, "").strip().lower() not in unused:
            raise ScenarioError(f"{config}: {key} is set: {why} is not supported")
    base = config.parent
    net = values.get("net-file")
    if not net:
        raise ScenarioError(f"{config}: no net-file in the configuration")
    net_file = (base / net).resolve()
    if not net_file.is_file():
        raise ScenarioError(f"{config}: network file not found: {net_file}")
    routes = _files(base, values.get("route-files", ""))
    adds = _files(base, values.get("additional-files", ""))
    for f in routes + adds:
        if not f.is_file():
            raise ScenarioError(f"{config}: file not found: {f}")
    begin = _seconds(config, "begin", values.get("begin", "0"))
    end_given = bool(values.get("end", "").strip()) and _seconds(config, "end", values["end"]) >= 0
    end = _seconds(config, "end", values["end"]) if end_given else begin + NO_END_HORIZON_S
    if end <= begin:
        raise ScenarioError(f"{config}: end ({end:g}) must be after begin ({begin:g})")
    step = _seconds(config, "step-length", values.get("step-length", "1"))
    if abs(step - 1.0) > 1e-9:
        raise ScenarioError(
            f"{config}: step-length {step:g} s is not supported (citybrain's signals and "
            "detectors run at 1 s steps)"
        )
    return Scenario(config.resolve(), net_file, routes, adds, begin, end, step, end_given, values)


def _files(base: Path, value: str) -> tuple[Path, ...]:
    names = [v for v in value.replace(",", " ").split() if v]
    return tuple((base / v).resolve() for v in names)


def _seconds(config: Path, key: str, value: str) -> float:
    """A SUMO time: seconds, or ``[[D:]H:]M:S``."""
    try:
        if ":" in value:
            total = 0.0
            for p in value.split(":"):
                total = total * 60 + float(p)
            if value.count(":") == 3:  # D:H:M:S, the day counted as 60 h above
                days, rest = value.split(":", 1)
                total = float(days) * 86400 + _seconds(config, key, rest)
            return total
        return float(value)
    except ValueError:
        raise ScenarioError(f"{config}: {key} is not a time: {value!r}") from None
