"""An ambulance's route as map data: its polyline, its speeds, and the signals along it.

Pure data, no SUMO. ``netmodel/corridors.py`` builds a ``Corridor`` from a SUMO net and a route
(a list of edges); a field deployment builds it from the same map data (road geometry, the
signals' link tables).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from citybrain.control.port import FloatArray


@dataclass(frozen=True, slots=True)
class EscortRequest:
    """Ask for an escort: a vehicle, its route (edge ids, in order), and its priority.

    A higher ``priority`` wins a conflict (two escorts wanting one signal); between equal
    priorities the earlier arrival wins.
    """

    vehicle: str
    route: tuple[str, ...]
    priority: int = 1
    requested_s: float = 0.0


@dataclass(frozen=True, slots=True)
class CorridorSignal:
    """One signalised intersection on the route, seen from the ambulance's approach."""

    intersection: str
    stop_m: float
    """Distance along the route of the stop line (the end of the approach lane)."""
    exit_m: float
    """Distance along the route where the junction ends (the start of the next edge)."""
    approach_lanes: tuple[str, ...]
    """Lanes of the approach edge with a link onto the route's next edge."""
    links: tuple[int, ...]
    """Signal link indices of the route's movement (approach edge to next edge)."""
    phases: tuple[int, ...]
    """Green phases that serve the movement best, best first (all its links green, priority
    green before permissive)."""
    other_lanes: tuple[str, ...] = ()
    """The approach edge's other lanes (those with no link onto the route's next edge): a
    queue there can stand between the ambulance and its own lane."""
    edge_m: float = float("nan")
    """Distance along the route where the approach edge begins (NaN: unknown). From there
    on the ambulance is in its own lane; before, a queue in the other lanes longer than
    the edge blocks its way in (a short turn pocket behind a long through queue)."""


@dataclass(frozen=True)
class Polyline:
    """A route's centre line; distances along it are metres from its first point."""

    points: tuple[tuple[float, float], ...]
    _xy: FloatArray = field(init=False, repr=False, compare=False)
    _start: FloatArray = field(init=False, repr=False, compare=False)
    _len: FloatArray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.points) < 2:
            raise ValueError("a polyline needs at least two points")
        xy = np.array(self.points, dtype=np.float64)
        seg = np.hypot(*(xy[1:] - xy[:-1]).T)
        object.__setattr__(self, "_xy", xy)
        object.__setattr__(self, "_len", seg)
        object.__setattr__(self, "_start", np.concatenate(([0.0], np.cumsum(seg)[:-1])))

    @property
    def length_m(self) -> float:
        return float(self._start[-1] + self._len[-1])

    def project(
        self, x: float, y: float, lo_m: float = -np.inf, hi_m: float = np.inf
    ) -> tuple[float, float]:
        """Distance along the line of the point nearest (x, y), and how far off the line it is.

        Only segments overlapping [lo_m, hi_m] are searched (all of them if none does).
        """
        a = self._xy[:-1]
        d = self._xy[1:] - a
        keep = (self._start + self._len >= lo_m) & (self._start <= hi_m)
        if not keep.any():
            keep[:] = True
        a, d = a[keep], d[keep]
        length, start = self._len[keep], self._start[keep]
        l2 = np.maximum(length * length, 1e-12)
        t = np.clip(((x - a[:, 0]) * d[:, 0] + (y - a[:, 1]) * d[:, 1]) / l2, 0.0, 1.0)
        off = np.hypot(a[:, 0] + t * d[:, 0] - x, a[:, 1] + t * d[:, 1] - y)
        best = int(np.argmin(off))
        return float(start[best] + t[best] * length[best]), float(off[best])

    def point_at(self, s_m: float) -> tuple[float, float]:
        """The point ``s_m`` metres along the line (clamped to its ends)."""
        s = min(max(s_m, 0.0), self.length_m)
        k = int(np.searchsorted(self._start, s, side="right")) - 1
        k = min(max(k, 0), len(self._len) - 1)
        t = (s - self._start[k]) / max(float(self._len[k]), 1e-12)
        a, b = self._xy[k], self._xy[k + 1]
        return float(a[0] + t * (b[0] - a[0])), float(a[1] + t * (b[1] - a[1]))


@dataclass(frozen=True)
class Corridor:
    """A route turned into what an escort needs, from map data only."""

    vehicle: str
    line: Polyline
    speed_from_m: tuple[float, ...]
    """Where each stretch of constant speed limit starts (metres along the route, first 0)."""
    speed_mps: tuple[float, ...]
    """The speed limit of each stretch."""
    signals: tuple[CorridorSignal, ...]
    """Signalised intersections in route order."""

    def __post_init__(self) -> None:
        if len(self.speed_from_m) != len(self.speed_mps) or not self.speed_mps:
            raise ValueError("a corridor needs one speed per stretch, and at least one stretch")
        if any(v <= 0 for v in self.speed_mps):
            raise ValueError("speed limits must be positive")

    @property
    def length_m(self) -> float:
        return self.line.length_m

    def speed_at(self, s_m: float) -> float:
        k = int(np.searchsorted(np.asarray(self.speed_from_m), s_m, side="right")) - 1
        return self.speed_mps[max(k, 0)]

    def cruise_time(self, from_m: float, to_m: float) -> float:
        """Seconds to cover [from_m, to_m] at the speed limits."""
        if to_m <= from_m:
            return 0.0
        total = 0.0
        starts = (*self.speed_from_m[1:], np.inf)
        for begin, end, v in zip(self.speed_from_m, starts, self.speed_mps, strict=True):
            lo, hi = max(begin, from_m), min(end, to_m)
            if hi > lo:
                total += (hi - lo) / v
        return total
