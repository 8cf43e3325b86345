"""The one place that talks to SUMO: libsumo in-process, or TraCI over a socket.

Both expose the same module API; detector and signal reads go through subscriptions, so each
step costs one call per domain instead of one per detector (this is what keeps TraCI usable).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any, Protocol

from citybrain.control.model import PlanStep
from citybrain.errors import ScenarioError
from citybrain.netmodel.layout import CityDetector, CityDetectorKind
from citybrain.sim.loaded import (
    LoadedProgram,
    LoadedScenario,
    LoadedSignal,
)

# TraCI variable ids (traci.constants), kept here so the adapter needs no traci import at load.
LAST_STEP_VEHICLE_NUMBER = 0x10
LAST_STEP_OCCUPANCY = 0x13
LAST_STEP_VEHICLE_HALTING_NUMBER = 0x14
LAST_STEP_VEHICLE_ID_LIST = 0x12
TL_RED_YELLOW_GREEN_STATE = 0x20
TL_CURRENT_PHASE = 0x28
TL_NEXT_SWITCH = 0x2D
TL_CURRENT_PROGRAM = 0x29
VAR_POSITION = 0x42
VAR_SPEED = 0x40

BACKENDS = ("libsumo", "traci")


class Backend(Protocol):
    """What the run loop needs from a running simulation."""

    def start(self, args: Sequence[str]) -> None: ...
    def step(self) -> None: ...
    def time(self) -> float: ...
    def subscribe(
        self, loops: Sequence[str], cameras: Sequence[str], signals: Sequence[str]
    ) -> None: ...
    def loop_values(self) -> dict[str, dict[int, Any]]: ...
    def camera_values(self) -> dict[str, dict[int, Any]]: ...
    def signal_states(self) -> dict[str, dict[int, Any]]: ...
    def set_signal_state(self, signal: str, state: str) -> None: ...
    def departed(self) -> tuple[str, ...]:
        """Vehicles that entered the network during the last step."""
        ...

    def arrived(self) -> tuple[str, ...]:
        """Vehicles that left the network during the last step."""
        ...

    def vehicle_class(self, vehicle: str) -> str: ...
    def vehicle_route(self, vehicle: str) -> tuple[str, ...]: ...
    def vehicle_state(self, vehicle: str) -> tuple[float, float, float] | None:
        """One vehicle's position (x, y) and speed; None if it is not in the network."""
        ...

    def next_signal(self, vehicle: str) -> tuple[str, int, float, str] | None:
        """The next signal on one vehicle's way: id, link index, distance, lamp."""
        ...

    def loaded(self) -> LoadedScenario:
        """Every signal's programs and the detectors, as loaded (call before the first step)."""
        ...

    def expected_vehicles(self) -> int:
        """Vehicles in the network or still to come (0: SUMO would end a run without end)."""
        ...

    def standing_vehicles(self, min_s: float) -> int:
        """Vehicles in the network that have not moved for at least ``min_s`` (a gridlock)."""
        ...

    def align(self, signal: LoadedSignal) -> None:
        """Make ``signal`` run the program, step and remaining time the scenario starts with
        (where the run's files left out the WAUT that chose them)."""
        ...

    def close(self) -> None: ...


class ModuleBackend:
    """A backend over the libsumo or traci module (they share one API)."""

    def __init__(self, module: ModuleType) -> None:
        self._m: Any = module
        self._running = False

    def start(self, args: Sequence[str]) -> None:
        try:
            self._m.start(list(args))
        except Exception as exc:  # SUMO reports bad inputs as generic errors
            raise ScenarioError(f"SUMO could not start: {str(exc).strip() or exc!r}") from None
        self._running = True

    def step(self) -> None:
        try:
            self._m.simulationStep()
        except Exception as exc:  # SUMO stopped: an output it cannot write, a bad input
            text = str(exc).strip().splitlines()
            raise ScenarioError(f"SUMO stopped: {text[-1] if text else exc!r}") from None

    def time(self) -> float:
        return float(self._m.simulation.getTime())

    def subscribe(
        self, loops: Sequence[str], cameras: Sequence[str], signals: Sequence[str]
    ) -> None:
        for d in loops:
            self._m.inductionloop.subscribe(d, (LAST_STEP_VEHICLE_ID_LIST, LAST_STEP_OCCUPANCY))
        for d in cameras:
            self._m.lanearea.subscribe(
                d, (LAST_STEP_VEHICLE_NUMBER, LAST_STEP_VEHICLE_HALTING_NUMBER)
            )
        for s in signals:
            self._m.trafficlight.subscribe(
                s,
                (TL_RED_YELLOW_GREEN_STATE, TL_CURRENT_PHASE, TL_NEXT_SWITCH, TL_CURRENT_PROGRAM),
            )

    def loop_values(self) -> dict[str, dict[int, Any]]:
        return self._m.inductionloop.getAllSubscriptionResults()  # type: ignore[no-any-return]

    def camera_values(self) -> dict[str, dict[int, Any]]:
        return self._m.lanearea.getAllSubscriptionResults()  # type: ignore[no-any-return]

    def signal_states(self) -> dict[str, dict[int, Any]]:
        return self._m.trafficlight.getAllSubscriptionResults()  # type: ignore[no-any-return]

    def set_signal_state(self, signal: str, state: str) -> None:
        self._m.trafficlight.setRedYellowGreenState(signal, state)

    def departed(self) -> tuple[str, ...]:
        return tuple(self._m.simulation.getDepartedIDList())

    def arrived(self) -> tuple[str, ...]:
        return tuple(self._m.simulation.getArrivedIDList())

    def vehicle_class(self, vehicle: str) -> str:
        return str(self._m.vehicle.getVehicleClass(vehicle))

    def vehicle_route(self, vehicle: str) -> tuple[str, ...]:
        return tuple(str(e) for e in self._m.vehicle.getRoute(vehicle))

    def vehicle_state(self, vehicle: str) -> tuple[float, float, float] | None:
        try:
            x, y = self._m.vehicle.getPosition(vehicle)
            speed = self._m.vehicle.getSpeed(vehicle)
        except Exception:  # the vehicle left the network (or was never in it)
            return None
        if x < -1e9:  # SUMO's INVALID_DOUBLE_VALUE for a vehicle not on a lane
            return None
        return float(x), float(y), float(speed)

    def next_signal(self, vehicle: str) -> tuple[str, int, float, str] | None:
        try:
            found = self._m.vehicle.getNextTLS(vehicle)
        except Exception:
            return None
        if not found:
            return None
        tls, index, dist, state = found[0]
        return str(tls), int(index), float(dist), str(state)

    def loaded(self) -> LoadedScenario:
        tl = self._m.trafficlight
        now = self.time()
        signals = {}
        for sid in tl.getIDList():
            programs = {
                str(logic.programID): LoadedProgram(
                    str(logic.programID),
                    _program_kind(logic.type),
                    tuple(PlanStep(str(p.state), float(p.duration)) for p in logic.phases),
                )
                for logic in tl.getAllProgramLogics(sid)
            }
            signals[str(sid)] = LoadedSignal(
                str(sid),
                str(tl.getProgram(sid)),
                programs,
                int(tl.getPhase(sid)),
                float(tl.getNextSwitch(sid)) - now,
            )
        found = [
            CityDetector(
                str(d),
                CityDetectorKind.LOOP,
                str(self._m.inductionloop.getLaneID(d)),
                float(self._m.inductionloop.getPosition(d)),
            )
            for d in self._m.inductionloop.getIDList()
        ]
        for d in self._m.lanearea.getIDList():  # read as one lane (see sim/loading.py)
            start = float(self._m.lanearea.getPosition(d))
            length = float(self._m.lanearea.getLength(d))
            found.append(
                CityDetector(
                    str(d),
                    CityDetectorKind.AREA,
                    str(self._m.lanearea.getLaneID(d)),
                    start + length,
                    length,
                )
            )
        return LoadedScenario(signals, tuple(found))

    def expected_vehicles(self) -> int:
        return int(self._m.simulation.getMinExpectedNumber())

    def align(self, signal: LoadedSignal) -> None:
        """Make ``signal`` run the program, step and remaining time the scenario starts with."""
        tl = self._m.trafficlight
        if tl.getProgram(signal.id) != signal.active:
            tl.setProgram(signal.id, signal.active)
            tl.setPhase(signal.id, signal.phase_index)
            tl.setPhaseDuration(signal.id, signal.phase_left_s)

    def standing_vehicles(self, min_s: float) -> int:
        vehicle = self._m.vehicle
        return sum(1 for v in vehicle.getIDList() if vehicle.getWaitingTime(v) >= min_s)

    def close(self) -> None:
        if self._running:
            self._running = False
            self._m.close()


_PROGRAM_KINDS = (
    "static",
    "rail_signal",
    "rail_crossing",
    "actuated",
    "NEMA",
    "delay_based",
    "sotl_phase",
    "sotl_platoon",
    "sotl_request",
    "sotl_wave",
    "sotl_marching",
    "swarm_based",
    "hilvl_deterministic",
    "off",
)
"""SUMO's program types by the number TraCI gives (``TrafficLightType``)."""


def _program_kind(value: Any) -> str:
    """SUMO's program type name (TraCI gives the type's number)."""
    if isinstance(value, int):
        return _PROGRAM_KINDS[value] if 0 <= value < len(_PROGRAM_KINDS) else str(value)
    return str(value)


def open_backend(name: str) -> Backend:
    if name == "libsumo":
        import libsumo

        return ModuleBackend(libsumo)
    if name == "traci":
        import traci

        return ModuleBackend(traci)
    raise ScenarioError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
