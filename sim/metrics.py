"""Measurements of a finished run, from SUMO's own outputs (tripinfo and statistics).

``mean_delay_s`` is RESCO's average delay: the mean over vehicles of ``timeLoss +
departDelay`` (unfinished vehicles included), with every vehicle that never entered the
network counted at its waiting time since its scheduled departure.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from citybrain.errors import ScenarioError
from citybrain.sim.sumoxml import iter_elements


@dataclass(frozen=True, slots=True)
class VehicleCounts:
    completed: int
    unfinished: int
    never_departed: int


@dataclass(frozen=True, slots=True)
class EmergencyTrip:
    id: str
    travel_time_s: float
    free_flow_time_s: float | None
    stops: int
    completed: bool
    ratio_to_free_flow: float | None = None
    """``travel_time_s / free_flow_time_s`` (None without a free-flow time)."""
    ran_red: int | None = None
    """Stop lines crossed on red, as the run saw the vehicle's own link (None: not watched)."""
    on_yellow: int | None = None
    """Stop lines crossed on yellow (legal; reported)."""
    escort: str = "none"
    civilian_delay_s: float | None = None
    """Mean delay of every other vehicle in this run (RESCO's definition)."""
    civilian_delay_no_escort_s: float | None = None
    """The same, for the same seed without escort."""
    civilian_delay_change: float | None = None
    """Relative change: with / without - 1."""


@dataclass(frozen=True)
class Metrics:
    scenario: str
    controller: str
    seed: int
    sumo_version: str
    mean_delay_s: float
    mean_travel_time_s: float
    mean_waiting_time_s: float
    throughput_veh_per_h: float
    vehicles: VehicleCounts
    emergency: list[EmergencyTrip]
    wall_time_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        extra = data.pop("extra")
        data.update(extra)
        return data


@dataclass(frozen=True, slots=True)
class TripSummary:
    """What the metrics need from tripinfo and statistic outputs."""

    delay_sum_s: float
    duration_sum_s: float
    waiting_sum_s: float
    completed: int
    unfinished: int
    never_departed: int
    never_departed_wait_s: float
    window_s: float
    emergency: list[EmergencyTrip]
    emergency_delay_sum_s: float = 0.0

    @property
    def civilian_delay_s(self) -> float:
        """Mean delay of all but the emergency vehicles (never-departed ones count)."""
        n = self.completed + self.unfinished + self.never_departed - len(self.emergency)
        total = (
            self.delay_sum_s
            - self.emergency_delay_sum_s
            + self.never_departed * self.never_departed_wait_s
        )
        return total / n if n > 0 else 0.0

    @property
    def mean_delay_s(self) -> float:
        n = self.completed + self.unfinished + self.never_departed
        total = self.delay_sum_s + self.never_departed * self.never_departed_wait_s
        return total / n if n else 0.0

    @property
    def mean_travel_time_s(self) -> float:
        n = self.completed + self.unfinished
        return self.duration_sum_s / n if n else 0.0

    @property
    def mean_waiting_time_s(self) -> float:
        n = self.completed + self.unfinished
        return self.waiting_sum_s / n if n else 0.0

    @property
    def throughput_veh_per_h(self) -> float:
        return self.completed * 3600.0 / self.window_s if self.window_s > 0 else 0.0


def summarize(
    tripinfo: Path,
    statistics: Path,
    window_s: float,
    emergency_types: Iterable[str] = (),
    free_flow_s: Mapping[str, float] | None = None,
) -> TripSummary:
    """Read a run's tripinfo (written with ``write-unfinished``) and statistic output."""
    kinds = set(emergency_types)
    free_flow_s = free_flow_s or {}
    delay = duration = waiting = emergency_delay = 0.0
    completed = unfinished = 0
    emergency: list[EmergencyTrip] = []
    for trip in _elements(tripinfo, "tripinfo"):
        done = float(trip.get("arrival", "-1")) >= 0 and trip.get("vaporized", "") != "end"
        delay += float(trip.get("timeLoss", 0)) + float(trip.get("departDelay", 0))
        duration += float(trip.get("duration", 0))
        waiting += float(trip.get("waitingTime", 0))
        completed += done
        unfinished += not done
        if trip.get("vType") in kinds:
            vid = trip.get("id", "")
            emergency_delay += float(trip.get("timeLoss", 0)) + float(trip.get("departDelay", 0))
            travel = float(trip.get("duration", 0))
            free = free_flow_s.get(vid)
            emergency.append(
                EmergencyTrip(
                    id=vid,
                    travel_time_s=travel,
                    free_flow_time_s=free,
                    stops=int(trip.get("waitingCount", 0)),
                    completed=done,
                    ratio_to_free_flow=travel / free if free and done else None,
                )
            )
    stats = _statistics(statistics)
    return TripSummary(
        delay_sum_s=delay,
        duration_sum_s=duration,
        waiting_sum_s=waiting,
        completed=completed,
        unfinished=unfinished,
        never_departed=stats[0],
        never_departed_wait_s=stats[1],
        window_s=window_s,
        emergency=emergency,
        emergency_delay_sum_s=emergency_delay,
    )


def _elements(path: Path, tag: str) -> Iterable[ET.Element]:
    if not path.is_file():
        raise ScenarioError(f"SUMO wrote no {path.name}: the run did not finish")
    yield from iter_elements(path, frozenset({tag}))


def _statistics(path: Path) -> tuple[int, float]:
    """Vehicles never inserted, and their mean wait since their scheduled departure."""
    waiting, wait_s = 0, 0.0
    for elem in _elements(path, "vehicles"):
        waiting = int(elem.get("waiting", 0))
    for elem in _elements(path, "vehicleTripStatistics"):
        wait_s = float(elem.get("departDelayWaiting", 0))
    return waiting, max(wait_s, 0.0)


def emergency_types(files: Iterable[Path]) -> set[str]:
    """Ids of vehicle types of class ``emergency`` defined in route or additional files."""
    found: set[str] = set()
    for path in files:
        for elem in iter_elements(path, frozenset({"vType"})):
            if elem.get("vClass") == "emergency":
                found.add(elem.get("id", ""))
    return found
