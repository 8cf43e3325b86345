"""Run the parking scenario in SUMO and watch the lot gates: who went in or out, when.

A gate camera is field equipment that sees a car pass; here the car passes the gate when
SUMO parks it in a ``<parkingArea>`` (in) and when it pulls out again (out). The run loop
steps SUMO one second at a time through libsumo and asks, each step, which vehicles started
or ended parking (``simulation.getParkingStartingVehiclesIDList`` /
``getParkingEndingVehiclesIDList``); the lot comes from the vehicle's current stop. When no
car is moving (all parked, or nobody has set off yet) the loop jumps to just before the next
departure or the next scheduled end of a stay, so a simulated day and a half takes seconds.

SUMO's own ``--stop-output`` (written by the same run) is the ground truth the validation
compares against; these gate events only feed the simulated cameras.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from citybrain.errors import ScenarioError

Direction = Literal["in", "out"]


@dataclass(frozen=True)
class GateEvent:
    """A vehicle passing a lot's gate at simulation time ``time_s``."""

    vehicle_id: str
    lot_id: str
    direction: Direction
    time_s: float


@dataclass(frozen=True)
class StopRecord:
    """One ``<stopinfo>`` of SUMO's stop output at a parking area."""

    vehicle_id: str
    lot_id: str
    started_s: float
    ended_s: float


def run_gates(
    sumocfg: Path,
    departures: Mapping[str, float],
    *,
    seed: int = 1,
    progress: Callable[[float], None] | None = None,
) -> list[GateEvent]:
    """Run the scenario to its end (every vehicle arrived) and return the gate events.

    ``departures``: every vehicle's departure time (from the route file), for the jumps.
    ``progress`` is called with the simulation time now and then.
    """
    import libsumo

    m: Any = libsumo
    try:
        m.start(["sumo", "-c", str(sumocfg), "--seed", str(seed), "--no-step-log", "true"])
    except Exception as exc:  # SUMO reports bad inputs as generic errors
        raise ScenarioError(f"SUMO could not start {sumocfg}: {exc}") from None
    events: list[GateEvent] = []
    parked: dict[str, str] = {}  # vehicle -> lot it is parked in
    try:
        waiting = dict(departures)  # vehicles not yet in the net
        end = float(m.simulation.getEndTime())
        while m.simulation.getMinExpectedNumber() > 0:
            now = float(m.simulation.getTime())
            if now >= end:
                break
            target = _next_interesting(m, now, parked, waiting)
            if target > now + 1:
                m.simulationStep(target - 1)  # silent stretch: nothing can start or end
                _check_still_parked(m, parked, target - 1)
            m.simulationStep()
            t = float(m.simulation.getTime())
            for vid in m.simulation.getDepartedIDList():
                waiting.pop(vid, None)
            for vid in m.simulation.getParkingStartingVehiclesIDList():
                lot, arrived = _current_stop(m, vid, t)
                parked[vid] = lot
                events.append(GateEvent(vid, lot, "in", arrived))
            for vid in m.simulation.getParkingEndingVehiclesIDList():
                lot = parked.pop(vid, "")
                if not lot:
                    raise ScenarioError(f"{vid} left a parking area it was never seen to enter")
                events.append(GateEvent(vid, lot, "out", t))
            if progress is not None:
                progress(t)
    finally:
        m.close()
    return events


def _check_still_parked(m: Any, parked: dict[str, str], t: float) -> None:
    """After a jump: every car we saw park is still parked (else the jump skipped an exit)."""
    for vid in parked:
        if not m.vehicle.isStoppedParking(vid):
            raise ScenarioError(f"jumping to {t:g} s skipped {vid} leaving {parked[vid]}")


def _next_interesting(
    m: Any, now: float, parked: dict[str, str], waiting: dict[str, float]
) -> float:
    """The next time something may happen at a gate, or ``now + 1`` if cars are moving."""
    moving = [v for v in m.vehicle.getIDList() if v not in parked]
    if moving or m.simulation.getPendingVehicles():
        return now + 1
    upcoming = list(waiting.values())
    for vid in parked:
        stops = m.vehicle.getStops(vid, 1)
        if stops:
            s = stops[0]
            upcoming.append(float(s.arrival) + float(s.duration) if s.arrival >= 0 else now + 1)
    if not upcoming:
        return now + 1
    return max(now + 1, min(upcoming))


def _current_stop(m: Any, vid: str, now: float) -> tuple[str, float]:
    """The lot a vehicle just parked in, and when it arrived there.

    SUMO reports a car among the "parking starting" vehicles one step after the stop
    began (the stop's ``arrival``, which its stop output calls ``started``): the car went
    through the gate at its arrival.
    """
    stops = m.vehicle.getStops(vid, 1)
    if not stops or not stops[0].stoppingPlaceID:
        raise ScenarioError(f"{vid} parked outside a parking area")
    arrival = float(stops[0].arrival)
    return str(stops[0].stoppingPlaceID), arrival if 0 <= arrival <= now else now


def read_stop_output(path: Path) -> list[StopRecord]:
    """The parking-area stops of a SUMO ``--stop-output`` file, by start time."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise ScenarioError(f"cannot read SUMO's stop output {path}: {exc}") from None
    records: list[StopRecord] = []
    for info in root.iter("stopinfo"):
        lot = info.get("parkingArea")
        if not lot:
            continue
        records.append(
            StopRecord(
                vehicle_id=info.get("id", ""),
                lot_id=lot,
                started_s=float(info.get("started", "nan")),
                ended_s=float(info.get("ended", "nan")),
            )
        )
    return sorted(records, key=lambda r: (r.started_s, r.vehicle_id, r.lot_id))
