"""Emergency vehicles in SUMO: their escort requests, their GPS, and what they went through.

Only the emergency vehicle itself is read: that it departed (and its class), its own route
(its escort request) and its position and speed (its GPS, with seeded noise, at the GPS
rate). Ordinary vehicles are never looked at. For the record (metrics and the time-space
diagram, never for control) the watch also keeps the vehicle's true distance along its
route, the lamps its movement showed at each signal of the corridor, and the lamp it crossed
each stop line on (``ran_red`` counts red ones).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from citybrain.control.corridor import Corridor, EscortRequest
from citybrain.control.port import GpsFix
from citybrain.netmodel.corridors import NetCorridors
from citybrain.sensornoise import GpsSettings
from citybrain.sim import backend as sb

EMERGENCY_CLASS = "emergency"


@dataclass
class Passage:
    """One stop line crossed: which signal, when, and the lamp the vehicle's link showed."""

    signal: str
    time_s: float
    state: str


@dataclass
class EmergencyRecord:
    """What one emergency vehicle went through (for the metrics and the diagram)."""

    vehicle: str
    corridor: Corridor
    depart_s: float
    arrive_s: float | None = None
    time_s: list[float] = field(default_factory=list)
    true_s: list[float] = field(default_factory=list)
    gps_s: list[float] = field(default_factory=list)
    lamps: list[str] = field(default_factory=list)
    """Per step: one character per corridor signal, the movement's lamp (G, y or r)."""
    passages: list[Passage] = field(default_factory=list)

    @property
    def ran_red(self) -> int:
        return sum(p.state in "rRsS" for p in self.passages)

    @property
    def on_yellow(self) -> int:
        return sum(p.state in "yY" for p in self.passages)


class Escorter(Protocol):
    """What the watch hands escort requests to (``EscortController``)."""

    def request(self, req: EscortRequest) -> None: ...
    def finish(self, vehicle: str, now_s: float) -> None: ...


class EmergencyWatch:
    """Finds emergency vehicles as they depart, requests their escort, and feeds their GPS."""

    def __init__(
        self,
        backend: sb.Backend,
        corridors: NetCorridors,
        escorter: Escorter | None,
        settings: GpsSettings,
        seed: int,
    ) -> None:
        self.backend = backend
        self.corridors = corridors
        self.escorter = escorter
        self.settings = settings
        self.seed = seed
        self.records: dict[str, EmergencyRecord] = {}
        self._active: dict[str, tuple[Any, ...] | None] = {}
        """Active vehicles and the next signal they saw at the last step."""
        self._rng: dict[str, np.random.Generator] = {}
        self._next_fix: dict[str, float] = {}
        self._shown: dict[str, str] = {}

    def before(self, t: float) -> tuple[GpsFix, ...]:
        """Called with the simulation at ``t``: departures, arrivals, and the fixes due now."""
        for vid in self.backend.departed():
            if self.backend.vehicle_class(vid) == EMERGENCY_CLASS:
                self._depart(vid, t)
        if not self._active:
            return ()
        for vid in self.backend.arrived():
            if vid in self._active:
                del self._active[vid]
                self.records[vid].arrive_s = t
                if self.escorter is not None:
                    self.escorter.finish(vid, t)
        fixes = []
        for vid in list(self._active):
            state = self.backend.vehicle_state(vid)
            if state is None:
                continue
            x, y, speed = state
            rec = self.records[vid]
            rec.time_s.append(t)
            last = rec.true_s[-1] if rec.true_s else 0.0
            s, _ = rec.corridor.line.project(x, y, last - 20.0, last + 80.0)
            rec.true_s.append(max(s, last))
            self._passage(vid, t)
            fix = self._fix(vid, t, x, y, speed)
            line = rec.corridor.line
            rec.gps_s.append(math.nan if fix is None else line.project(fix.x, fix.y)[0])
            if fix is not None:
                fixes.append(fix)
        return tuple(fixes)

    def after(self, shown: dict[str, dict[int, Any]]) -> None:
        """Called after a step with what the signals showed during it."""
        for vid in self._active:
            rec = self.records[vid]
            lamps = []
            for sig in rec.corridor.signals:
                state = shown.get(sig.intersection, {}).get(sb.TL_RED_YELLOW_GREEN_STATE, "")
                self._shown[sig.intersection] = state
                chars = [state[i] for i in sig.links if i < len(state)]
                lamps.append(_lamp(chars))
            if len(rec.lamps) < len(rec.time_s):
                rec.lamps.append("".join(lamps))

    def _depart(self, vid: str, t: float) -> None:
        route = self.backend.vehicle_route(vid)
        req = EscortRequest(vid, route, priority=1, requested_s=t)
        corridor = self.corridors(req)
        self.records[vid] = EmergencyRecord(vid, corridor, t)
        self._active[vid] = None
        key = zlib.crc32(vid.encode())
        self._rng[vid] = np.random.default_rng([self.seed, self.settings.seed, key])
        self._next_fix[vid] = t
        if self.escorter is not None:
            self.escorter.request(req)

    def _fix(self, vid: str, t: float, x: float, y: float, speed: float) -> GpsFix | None:
        if t + 1e-9 < self._next_fix[vid]:
            return None
        self._next_fix[vid] += self.settings.period_s
        rng, st = self._rng[vid], self.settings
        nx, ny, nv = rng.normal(size=3).tolist()
        drop = float(rng.random())
        if drop < st.dropout:
            return None
        return GpsFix(
            vid,
            t,
            x + st.sigma_m * nx,
            y + st.sigma_m * ny,
            max(speed + st.speed_sigma_mps * nv, 0.0),
        )

    def _passage(self, vid: str, t: float) -> None:
        """Record the stop line crossed during the last step, with the lamp it showed."""
        now = self.backend.next_signal(vid)
        before = self._active[vid]
        self._active[vid] = now
        if before is None:
            return
        tls, index, dist = before[0], int(before[1]), float(before[2])
        # the next signal changed, or the distance to it grew: a stop line was crossed (a new
        # link index at a shrinking distance is only a lane change)
        crossed = now is None or now[0] != tls or float(now[2]) > dist + 0.5
        if not crossed or dist > 60.0:  # too far to cross in one step: a route change
            return
        state = self._shown.get(tls, "")
        lamp = state[index] if index < len(state) else "?"
        self.records[vid].passages.append(Passage(tls, t - 1.0, lamp))


def _lamp(chars: list[str]) -> str:
    """The best lamp among the movement's links: G (any green), y (yellow), r (red)."""
    if any(c in "Gg" for c in chars):
        return "G"
    if any(c in "yYu" for c in chars):
        return "y"
    return "r"
