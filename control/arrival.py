"""Where an ambulance is on its route, and when it will reach each stop line, from noisy GPS.

A fix (1 Hz, metres of noise) is projected onto the route's polyline near where the vehicle
is expected, which turns it into a distance along the route. An alpha-beta filter smooths
distance and speed (the fix's own speed is blended in); the distance never goes backwards.
Between fixes the estimate is dead-reckoned at the filtered speed.

Arrival at a stop line ahead assumes the queues ahead are flushed (that is the escort's job):
the vehicle accelerates from its current speed to the speed limit and cruises, so a vehicle
slowed by a queue is predicted at cruise speed, not at its crawl.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from citybrain.control.corridor import Corridor
from citybrain.control.port import GpsFix


@dataclass(frozen=True, slots=True)
class TrackerSettings:
    alpha: float = 0.25
    """Share of a fix's distance residual taken into the distance estimate."""
    beta: float = 0.05
    """Share of a fix's distance residual (per second) taken into the speed estimate."""
    gps_speed_weight: float = 0.8
    """Weight of the fix's own (Doppler) speed against the filter's speed."""
    window_back_m: float = 40.0
    window_ahead_m: float = 80.0
    """A fix is searched on the route from this far behind to this far ahead of the estimate
    (plus the distance the vehicle could have driven since the last fix)."""
    reacquire_m: float = 30.0
    """A fix further than this off the route near the estimate is searched on the whole route."""
    max_speed_mps: float = 50.0


class RouteTracker:
    """Distance along the route and speed of one vehicle, from its GPS fixes."""

    def __init__(self, corridor: Corridor, settings: TrackerSettings | None = None) -> None:
        self.corridor = corridor
        self.settings = settings or TrackerSettings()
        self.s_m = 0.0
        self.v_mps = 0.0
        self.fix_s: float | None = None
        """Time of the last fix used (None before the first)."""
        self.raw_s_m = 0.0
        """The last fix's own projection (unfiltered), for the record."""

    @property
    def started(self) -> bool:
        return self.fix_s is not None

    def age(self, now_s: float) -> float:
        """Seconds since the last fix (infinite before the first)."""
        return math.inf if self.fix_s is None else now_s - self.fix_s

    def update(self, fix: GpsFix) -> None:
        st, line = self.settings, self.corridor.line
        if self.fix_s is None:
            s, _ = line.project(fix.x, fix.y)
            self.s_m, self.raw_s_m = s, s
            self.v_mps = max(fix.speed_mps, 0.0)
            self.fix_s = fix.time_s
            return
        dt = fix.time_s - self.fix_s
        if dt <= 0:
            return
        predicted = self.s_m + self.v_mps * dt
        reach = st.max_speed_mps * dt
        z, off = line.project(
            fix.x, fix.y, self.s_m - st.window_back_m, predicted + st.window_ahead_m + reach
        )
        if off > st.reacquire_m:  # far off near the estimate: look along the whole route
            z, off = line.project(fix.x, fix.y)
        self.raw_s_m = z
        residual = z - predicted
        s = predicted + st.alpha * residual
        v = self.v_mps + st.beta * residual / dt
        v = (1.0 - st.gps_speed_weight) * v + st.gps_speed_weight * max(fix.speed_mps, 0.0)
        self.s_m = min(max(s, self.s_m), line.length_m)
        self.v_mps = min(max(v, 0.0), st.max_speed_mps)
        self.fix_s = fix.time_s

    def position(self, now_s: float) -> float:
        """Distance along the route at ``now_s``, dead-reckoned from the last fix."""
        if self.fix_s is None:
            return self.s_m
        return min(self.s_m + self.v_mps * max(now_s - self.fix_s, 0.0), self.corridor.length_m)


def travel_time(corridor: Corridor, s_m: float, v_mps: float, to_m: float, accel: float) -> float:
    """Seconds from ``s_m`` (moving at ``v_mps``) to ``to_m``: accelerate at ``accel`` up to
    the speed limit, then cruise at the limits."""
    if to_m <= s_m:
        return 0.0
    cruise = corridor.cruise_time(s_m, to_m)
    vc = corridor.speed_at(s_m)
    v = min(max(v_mps, 0.0), vc)
    if v >= vc or accel <= 0:
        return cruise
    d = to_m - s_m
    d_acc = (vc * vc - v * v) / (2.0 * accel)
    if d <= d_acc:  # still accelerating when it gets there
        return (-v + math.sqrt(v * v + 2.0 * accel * d)) / accel
    return cruise + (vc - v) ** 2 / (2.0 * accel * vc)
