"""Ambulance escort: a moving green wave along an emergency vehicle's route.

``EscortController`` wraps any controller (it keeps the normal controller's decisions and
overrides only the intersections an escort needs), so the same escort runs over ``fixed``,
``actuated`` or ``adaptive``, in SUMO and in the field. Its inputs are what the field has:
escort requests (a vehicle and its route, turned into a ``Corridor`` from map data), the
ambulance's GPS fixes (``Readings.gps``), and the detector layer's queue estimates. Every
request still passes through the safety envelope: clearance intervals are never skipped, and
a held green (``hold=True``, the declared preemption mode) is the only thing the envelope
lets run past the maximum.

Modes:

* ``none``: nothing is overridden (the ambulance is only tracked, for the record).
* ``local``: the Opticom way. A signal serves the ambulance's movement once the GPS puts it
  within ``local_range_m`` of the stop line, and holds it until the ambulance is through.
* ``corridor``: ours. For each signal ahead: the arrival at the stop line is predicted from
  the filtered GPS track (``control/arrival.py``); the queue on the ambulance's approach
  lanes (the estimator's standing and approaching vehicles, beyond the camera included) gives
  the clearance time, start-up lost time + headway x vehicles + the last vehicle's crossing
  (calibrated in SUMO by ``bench/escort_calibrate.py``); the green must start by arrival -
  clearance - margin. The phase is requested early enough for the current green's minimum
  and the full change interval, held until the GPS puts the ambulance beyond the junction,
  then the signal recovers (``control/recovery.py``: the longest-waiting phases are served
  first, then the normal controller takes over). Successive signals turn green one after the
  other: a green wave that moves with the ambulance. A queue that reaches back from one
  signal to the previous one on the route holds that signal's queue, so the downstream one
  opens first. A hold through which the ambulance stands still for ``futile_hold_s`` of its
  own green is not helping (waiting out another escort's hold does not count): when
  another lane of the ambulance's approach edge has a phase of its own (the ambulance is
  stuck in a through queue short of its turn pocket) that lane is flushed first, otherwise
  the hold is paused; either way the escort asks again once the ambulance moves.
  Before that happens: when the ambulance is still short of a turn pocket whose other lanes'
  queue reaches back past the pocket's start, and its own lane's queue fits in the pocket,
  holding its phase early (to clear the pocket) would only let the through queue grow and
  shut the pocket; the other lanes are served instead, and the ambulance's phase comes late
  (green ``margin_s`` before it arrives), the Opticom timing.

Conflicts (two escorts wanting one signal): the higher priority wins, then the earlier
predicted arrival, then the vehicle id; a phase serving both is used when there is one. The
winner is released once through (or after ``max_hold_s``), so the other gets its turn: no
deadlock. At such a contested signal (ahead of two escorts on phases with nothing in
common) three things make room for the loser, whose green can come only after the winner
has crossed and the change interval has run:

* the winner's hold ends as soon as its filtered estimate, from a fix at most
  ``fresh_fix_s`` old, is ``crossed_m`` past the stop line (it entered on green; the yellow
  and all-red that follow protect it), not ``passed_m``; without a fresh fix the usual
  ``passed_m`` applies;
* while the winner's green is not needed yet, the loser's approach is served first
  (L -> W -> L): its phase is asked for as late as still lets it discharge the loser's
  queue (start-up lost time + a headway per vehicle, at least the minimum green) and change
  back by the winner's ``green_by`` (its own queue's clearance and ``margin_s`` before its
  arrival); the winner's phase is asked for again as soon as that is due. Only when at
  least the minimum green fits; once per signal and loser;
* the signal before the contested one on the loser's route gives it its green late, so
  that it reaches the contested signal later without stopping: the time it must lose is
  the winner's arrival + passage + change interval, less the loser's own arrival and what
  it can lose rolling up to the contested red (``red_approach``, a Krauss model of 1 s
  steps), and the late green is set from the same model, never so late that the loser
  falls below ``min_roll_mps``; once the change to its phase must be asked for, the time
  left in a running change interval is taken from the change this controller saw begin.

A lost GPS feed is dead-reckoned for ``lost_after_s``, then the escort's holds are
released and the normal controller runs those signals until fixes return.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from citybrain.control.arrival import RouteTracker, TrackerSettings, travel_time
from citybrain.control.base import JAM_SPACING_M
from citybrain.control.corridor import Corridor, CorridorSignal, EscortRequest
from citybrain.control.envelope import EnvelopeTiming, SignalRules, signal_rules
from citybrain.control.estimate import TrafficEstimator
from citybrain.control.model import Intersection
from citybrain.control.port import (
    Controller,
    Decision,
    IntArray,
    Layout,
    PhaseRequest,
    Readings,
    SignalView,
)
from citybrain.control.recovery import Recovery, RecoverySettings
from citybrain.errors import ConfigError

__all__ = [
    "CorridorSource",
    "EscortController",
    "EscortMode",
    "EscortRequest",
    "EscortSettings",
    "EscortTrace",
    "brake_point_m",
    "clearance_time",
    "red_approach",
]


class EscortMode(StrEnum):
    NONE = "none"
    LOCAL = "local"
    CORRIDOR = "corridor"


MOVED_M = 5.0
"""The ambulance has moved once its estimate advanced this far (GPS noise is smaller)."""
SPILLBACK_SHARE = 0.6
"""A queue filling this share of the link back to the previous signal on the route blocks
that signal's queue: the corridor opens the two together (downstream first)."""


@dataclass(frozen=True, slots=True)
class EscortSettings:
    """Escort timing. Queue discharge constants are measured in SUMO by
    ``bench/escort_calibrate.py`` (see BENCHMARKS.md)."""

    lost_time_s: float = 1.05
    """Start-up lost time: the n-th queued vehicle of a lane has crossed the stop line
    ``lost_time_s + headway_s * n`` after the start of green (measured: 1.05 s)."""
    headway_s: float = 1.91
    """Saturation headway of a discharging queue, per lane (measured: 1.91 s)."""
    cross_s: float = 2.35
    """Time a discharging vehicle takes from the stop line to the far side of the junction
    (measured: 2.35 s)."""
    margin_s: float = 4.0
    """Spare time between the queue's clearance and the ambulance's arrival (it must see
    green before it would begin to brake for a red)."""
    passed_m: float = 12.0
    """The ambulance is through once its estimate is this far past the stop line (it is
    then inside the junction, and the change interval that follows lets it clear)."""
    crossed_m: float = 5.0
    """At a signal another escort is waiting for, the ambulance's hold is released once its
    filtered estimate (from a fix at most ``fresh_fix_s`` old) is this far past the stop
    line: it has entered on green, and the change interval that follows (yellow, all-red)
    protects it. About three times the filtered track's error (raw fixes: 4 m of noise)."""
    fresh_fix_s: float = 1.0
    """How old the last fix may be for the early release (``crossed_m``)."""
    local_range_m: float = 150.0
    """``local`` mode: distance to the stop line at which the signal is asked."""
    horizon_s: float = 150.0
    """Signals the ambulance reaches later than this are not planned yet."""
    accel_mps2: float = 2.0
    """Acceleration assumed when predicting an arrival from below the speed limit."""
    decel_mps2: float = 4.5
    """The ambulance's deceleration when it brakes for a red or a standing queue (SUMO:
    the vehicle type's ``decel``; Krauss brakes so that it could stop within the gap)."""
    reaction_s: float = 1.0
    """The driver's reaction time (SUMO: Krauss ``tau``), in the model of an approach to a
    red (``red_approach``)."""
    min_roll_mps: float = 2.0
    """An ambulance slowed by a late green on purpose must keep at least this speed (SUMO
    counts a stop below 0.1 m/s; the margin covers 1 s steps, dawdling and GPS lag)."""
    release_lag_s: float = 2.0
    """From an ambulance crossing a stop line to its signal being asked to change: the
    tracker's lag behind the true position plus one control step."""
    lost_after_s: float = 10.0
    """Without a fix for this long an escort is lost: its holds are released."""
    max_hold_s: float = 120.0
    """A signal held this long without the ambulance passing is given up for that escort."""
    futile_hold_s: float = 10.0
    """A hold through which the ambulance has not moved for this long is paused (it is stuck
    behind something the held phase does not serve, say a queue in the lane it must leave):
    the normal controller runs the signal for ``pause_s``, then the escort asks again."""
    pause_s: float = 20.0
    """How long a futile hold is paused (or the other lanes flushed) at most; either ends as
    soon as the ambulance moves again."""
    recovery_max_green_s: float = 40.0
    recovery_max_s: float = 150.0
    gps_alpha: float = 0.25
    gps_beta: float = 0.05
    gps_speed_weight: float = 0.8
    """Tracker gains (``control/arrival.py``): distance and speed residual shares, and the
    weight of the fix's own speed."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"escort.{f.name} must be a number >= 0, not {value}")
        for name in ("horizon_s", "lost_after_s", "max_hold_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"escort.{name} must be positive")
        if not 0 < self.gps_alpha <= 1 or self.gps_beta > 1 or self.gps_speed_weight > 1:
            raise ConfigError(
                "escort.gps_alpha must be in (0, 1], gps_beta and gps_speed_weight in [0, 1]"
            )

    @property
    def tracker(self) -> TrackerSettings:
        return TrackerSettings(
            alpha=self.gps_alpha, beta=self.gps_beta, gps_speed_weight=self.gps_speed_weight
        )


def clearance_time(queue_veh: float, settings: EscortSettings) -> float:
    """Seconds of green a queue of ``queue_veh`` vehicles (per lane) needs to be out of the
    way: start-up lost time, one headway per vehicle, the last one's crossing."""
    if queue_veh < 0.5:
        return 0.0
    return settings.lost_time_s + settings.headway_s * queue_veh + settings.cross_s


def brake_point_m(v_mps: float, settings: EscortSettings) -> float:
    """How far before a standing obstacle (a red stop line, a queue's tail) an ambulance
    cruising at ``v_mps`` still cruises: one step before Krauss's safe speed falls below its
    own (gap = v tau + v^2 / 2b)."""
    b, tau = settings.decel_mps2, settings.reaction_s
    return v_mps * tau + v_mps * v_mps / (2.0 * b) + v_mps


def red_approach(
    v_mps: float, queue_veh: float, green_after_s: float, settings: EscortSettings
) -> tuple[float, float]:
    """An ambulance cruising at ``v_mps`` towards a red with ``queue_veh`` vehicles standing
    in its lane: the time it loses and the lowest speed it falls to, when the green comes
    ``green_after_s`` after it passes ``brake_point_m`` before the queue's tail.

    Krauss car following in 1 s steps: the speed is the least of the cruise speed, the last
    speed plus ``accel_mps2`` and the safe speed behind the obstacle, -b tau +
    sqrt((b tau)^2 + v_leader^2 + 2 b gap), so braking eases as the gap closes. The stop
    line is gone at the green; a queue's last vehicle starts ``lost_time_s`` + ``headway_s``
    per vehicle ahead of it after the green, then accelerates at ``accel_mps2``."""
    v = round(max(v_mps, 0.5), 1)
    q = max(round(queue_veh), 0)
    s = settings
    return _red_approach(
        v, q, float(math.ceil(green_after_s - 1e-9)), s.decel_mps2, s.accel_mps2,
        s.reaction_s, s.lost_time_s, s.headway_s,
    )


@functools.lru_cache(maxsize=8192)
def _red_approach(
    v: float, q: int, n: float, b: float, a: float, tau: float, lost: float, headway: float
) -> tuple[float, float]:
    gap0 = v * tau + v * v / (2.0 * b) + v
    moves = n + (lost + headway * (q - 1) if q else 0.0)
    x, speed, t, lead_v, lead_x, vmin = 0.0, v, 0.0, 0.0, gap0, v
    while t < 600.0:
        t += 1.0
        free = q == 0 and t > moves
        if q and t > moves:
            lead_v = min(v, lead_v + a)
            lead_x += lead_v
        speed = min(v, speed + a)
        if not free:
            gap = max(lead_x - x, 0.0)
            speed = min(speed, -b * tau + math.sqrt((b * tau) ** 2 + lead_v**2 + 2.0 * b * gap))
        x += speed
        vmin = min(vmin, speed)
        if t > moves and speed >= v - 1e-9 and (free or lead_v >= v - 1e-9):
            break
    return t - x / v, vmin


CorridorSource = Callable[[EscortRequest], Corridor]
"""Turns a request's route into a corridor from map data (``sim/corridor.py`` in SUMO)."""


@dataclass
class EscortTrace:
    """What an escort saw and did, step by step (for the time-space diagram)."""

    vehicle: str
    corridor: Corridor
    time_s: list[float] = field(default_factory=list)
    gps_s: list[float] = field(default_factory=list)
    """The step's fix projected onto the route (NaN without a fix)."""
    est_s: list[float] = field(default_factory=list)
    speed_mps: list[float] = field(default_factory=list)
    queue_veh: list[list[float]] = field(default_factory=list)
    """Per step, per corridor signal: the queue estimate on the ambulance's approach."""
    arrival_s: list[list[float]] = field(default_factory=list)
    """Per step, per corridor signal: predicted arrival at the stop line (NaN once passed)."""
    events: list[tuple[float, str, str]] = field(default_factory=list)
    """(time, intersection or '', what happened)."""


@dataclass(frozen=True, slots=True)
class Claim:
    """An escort asking one signal for one of its phases."""

    vehicle: str
    priority: int
    arrival_s: float
    phases: tuple[int, ...]


@dataclass
class _Escort:
    request: EscortRequest
    corridor: Corridor
    tracker: RouteTracker
    lanes: list[IntArray]
    trace: EscortTrace
    others: list[IntArray] = field(default_factory=list)
    """Per signal: the other lanes of the ambulance's approach edge."""
    passed: int = 0
    """Signals behind the ambulance (route order)."""
    since: dict[int, float] = field(default_factory=dict)
    """Signals held for this escort, by corridor index: since when."""
    given_up: set[int] = field(default_factory=set)
    flush: list[int | None] = field(default_factory=list)
    """Per signal: the phase that serves the other lanes of the ambulance's approach edge."""
    paused: dict[int, tuple[float, float]] = field(default_factory=dict)
    """Signals whose hold was futile (the ambulance stood still through it): until when, and
    since when (the pause ends early once the ambulance moves)."""
    flushing: dict[int, tuple[float, float]] = field(default_factory=dict)
    """Signals serving the other lanes of the ambulance's approach (a queue there blocks the
    way to its own lane): until when, and since when."""
    pre_flush: dict[int, float] = field(default_factory=dict)
    """Signals serving the other lanes of the ambulance's approach before it comes (their
    queue reaches back past its own lane): since when (NaN: done). Once per signal."""
    anchor_m: float = -math.inf
    moved_at: float = math.nan
    """Where and when the ambulance last moved ``MOVED_M`` (for futile holds)."""
    lost: bool = False
    ahead: dict[int, tuple[float, float, float]] = field(default_factory=dict)
    """This step's plan for the signals ahead, by corridor index: by when the ambulance's
    green must start, its predicted arrival, and the queue on its approach."""
    interleaved: set[int] = field(default_factory=set)
    """Signals whose approach was served between another escort's green and its own (once
    per signal)."""

    s_m: float = 0.0
    arrivals: list[float] = field(default_factory=list)
    queues: list[float] = field(default_factory=list)
    """This step's estimate, predicted arrivals and queues, per corridor signal."""
    late: dict[int, _Late] = field(default_factory=dict)
    """Signals whose green for this escort comes late on purpose (it must reach a contested
    signal later, after another escort's passage): the plan, by corridor index."""
    late_dropped: set[int] = field(default_factory=set)
    """Signals where a late green could not be kept (not planned again)."""


@dataclass
class _Late:
    """A late green at one signal, slowing the ambulance without stopping it."""

    green_s: float
    """When the ambulance's phase is to turn green."""
    lost_s: float
    """The time the ambulance is expected to lose by it."""
    conflict: str
    """The contested signal this makes room at."""
    frozen: bool = False
    """Fixed once the change to the ambulance's phase must be asked for."""


@dataclass
class _Interleave:
    """A contested signal serving the losing escort's approach before the winner's green:
    the loser's queue is flushed while the winner is still on its way."""

    winner: str
    loser: str
    phase: int
    """The loser's phase, served now."""
    back: int
    """The winner's phase, due by ``green_by``."""
    green_by: float
    """By when the winner's green must start (as planned; updated every step)."""
    green_s: float
    """When the loser's green is due to start (the change interval from the phase shown)."""


class EscortController:
    """Wraps a controller and escorts emergency vehicles through its signals."""

    def __init__(
        self,
        base: Controller,
        mode: EscortMode | str,
        layout: Layout,
        corridor_of: CorridorSource,
        envelope: EnvelopeTiming | None = None,
        settings: EscortSettings | None = None,
    ) -> None:
        if base.signal_program is not None:
            raise ConfigError(
                f"controller {base.name!r} runs inside the signal: an escort needs a controller "
                "whose requests go through the envelope"
            )
        self.base = base
        self.mode = EscortMode(mode)
        self.name = base.name
        self.uses_detectors = True
        self.signal_program: str | None = None
        self.layout = layout
        self.corridor_of = corridor_of
        self.settings = settings or EscortSettings()
        timing = envelope or EnvelopeTiming()
        self.xs: dict[str, Intersection] = {x.id: x for x in layout.intersections}
        self.rules: dict[str, SignalRules] = {
            x.id: signal_rules(x, timing) for x in layout.intersections
        }
        base_est = getattr(base, "estimator", None)
        self._own_estimator = not isinstance(base_est, TrafficEstimator)
        self.estimator: TrafficEstimator = (
            base_est if isinstance(base_est, TrafficEstimator) else TrafficEstimator(layout)
        )
        index = self.estimator.lane_index
        self._phase_lanes = {
            x.id: [_lanes(index, x.phase_lanes(p.index)) for p in x.phases]
            for x in layout.intersections
        }
        self._last_green: dict[str, list[float]] = {}
        self._changing: dict[str, tuple[int, float]] = {}
        """Per signal: the phase last seen green, and when (a change interval that follows
        began then, from that phase)."""
        self.escorts: dict[str, _Escort] = {}
        self.traces: dict[str, EscortTrace] = {}
        self.recoveries: dict[str, Recovery] = {}
        self._held: dict[str, str] = {}
        """Signals preempted at the last step, and for which vehicle."""
        self._contested: set[str] = set()
        """Signals ahead of two escorts on phases with nothing in common."""
        self.interleaves: dict[str, _Interleave] = {}

    # ------------------------------------------------------------------ requests (the port)

    def request(self, req: EscortRequest) -> None:
        """Start escorting ``req.vehicle`` along ``req.route`` (replaces an earlier request)."""
        corridor = self.corridor_of(req)
        index = self.estimator.lane_index
        lanes = [_lanes(index, sig.approach_lanes) for sig in corridor.signals]
        trace = EscortTrace(req.vehicle, corridor)
        trace.events.append((req.requested_s, "", f"escort requested ({self.mode})"))
        self.escorts[req.vehicle] = _Escort(
            req,
            corridor,
            RouteTracker(corridor, self.settings.tracker),
            lanes,
            trace,
            others=[_lanes(index, sig.other_lanes) for sig in corridor.signals],
            flush=[self._flush_phase(sig) for sig in corridor.signals],
        )
        self.traces[req.vehicle] = trace

    def finish(self, vehicle: str, now_s: float) -> None:
        """The vehicle has arrived (or the request was cancelled): release everything."""
        escort = self.escorts.pop(vehicle, None)
        if escort is not None:
            escort.trace.events.append((now_s, "", "escort ended"))

    # ------------------------------------------------------------------ the controller

    def decide(self, readings: Readings) -> Decision:
        decision = self.base.decide(readings)
        if self._own_estimator:
            self.estimator.update(readings)
        now = readings.time_s
        for x_id, view in readings.signals.items():
            self._observe(x_id, view, now)
        if not self.escorts and not self.recoveries and not self._held:
            return decision
        for fix in readings.gps:
            escort = self.escorts.get(fix.vehicle)
            if escort is not None:
                escort.tracker.update(fix)
        self._contested = self._find_contested()
        claims: dict[str, list[Claim]] = {}
        active = [e for e in self.escorts.values() if self._track(e, readings)]
        if self.mode is EscortMode.CORRIDOR:
            self._plan_late(active, readings)
        for escort in active:
            self._escort_step(escort, readings, claims)
        if self.mode is EscortMode.CORRIDOR:
            self._plan_interleaves(readings)
        else:
            self.interleaves.clear()
        overrides: dict[str, PhaseRequest] = {}
        notes = dict(decision.notes)
        held: dict[str, str] = {}
        for x_id, wanted in claims.items():
            phase, winner = self._resolve(x_id, wanted, readings.signals[x_id])
            overrides[x_id] = PhaseRequest(x_id, phase, hold=True)
            held[x_id] = winner
            notes[x_id] = f"escort {winner}: phase {phase} held"
            self.recoveries.pop(x_id, None)
        for x_id, il in self.interleaves.items():
            overrides[x_id] = PhaseRequest(x_id, il.phase, hold=True)
            held[x_id] = il.loser
            notes[x_id] = f"escort {il.loser}: phase {il.phase} before {il.winner}'s green"
            self.recoveries.pop(x_id, None)
        if self.mode is EscortMode.CORRIDOR:
            for x_id in self._held.keys() - held.keys():
                self._start_recovery(x_id, readings.signals[x_id], now)
            for x_id, recovery in list(self.recoveries.items()):
                if x_id in held:
                    continue
                demand = self._demand(x_id)
                serve = recovery.request(now, readings.signals[x_id], demand)
                if serve is None:
                    del self.recoveries[x_id]
                    continue
                overrides[x_id] = PhaseRequest(x_id, serve)
                notes[x_id] = f"recovery after escort: phase {serve}"
        self._held = held
        if not overrides:
            return Decision(decision.requests, notes)
        requests = [overrides.pop(r.intersection, r) for r in decision.requests]
        requests.extend(overrides.values())
        return Decision(tuple(requests), notes)

    # ------------------------------------------------------------------ one escort

    def _track(self, escort: _Escort, readings: Readings) -> bool:
        """Advance one escort's estimate, arrivals and queues (and its record); whether it
        asks anything of the signals at this step."""
        now, st = readings.time_s, self.settings
        tracker, corridor, trace = escort.tracker, escort.corridor, escort.trace
        fresh = any(f.vehicle == escort.request.vehicle for f in readings.gps)
        age = tracker.age(now)
        lost = age > st.lost_after_s
        if lost != escort.lost:
            escort.lost = lost
            what = "GPS lost: holds released" if lost else "GPS back"
            trace.events.append((now, "", what))
        s = tracker.position(now)
        v = tracker.v_mps
        if not s - escort.anchor_m < MOVED_M:
            escort.anchor_m, escort.moved_at = s, now
        queues = [self._queue(lanes) for lanes in escort.lanes]
        escort.ahead.clear()
        arrivals: list[float] = []
        while escort.passed < len(corridor.signals) and tracker.started and not lost:
            sig = corridor.signals[escort.passed]
            # At a signal another escort waits for, its hold ends as soon as the ambulance
            # has surely entered (it did so on green; the change interval protects it).
            early = sig.intersection in self._contested and age <= st.fresh_fix_s
            if s < sig.stop_m + (st.crossed_m if early else st.passed_m):
                break
            if escort.passed in escort.since:
                trace.events.append((now, sig.intersection, "through: released"))
            escort.since.pop(escort.passed, None)
            escort.late.pop(escort.passed, None)
            escort.passed += 1
        for k, sig in enumerate(corridor.signals):
            arrivals.append(
                now + travel_time(corridor, s, v, sig.stop_m, st.accel_mps2)
                if k >= escort.passed and tracker.started
                else math.nan
            )
        trace.time_s.append(now)
        trace.gps_s.append(tracker.raw_s_m if fresh else math.nan)
        trace.est_s.append(s if tracker.started else math.nan)
        trace.speed_mps.append(v)
        trace.queue_veh.append(queues)
        trace.arrival_s.append(arrivals)
        escort.s_m, escort.arrivals, escort.queues = s, arrivals, queues
        if self.mode is EscortMode.NONE or lost or not tracker.started:
            escort.since.clear()
            escort.late.clear()
            return False
        return True

    def _escort_step(
        self, escort: _Escort, readings: Readings, claims: dict[str, list[Claim]]
    ) -> None:
        now, st = readings.time_s, self.settings
        corridor, trace = escort.corridor, escort.trace
        s, arrivals, queues = escort.s_m, escort.arrivals, escort.queues
        chain_by = math.inf
        for k in range(escort.passed, len(corridor.signals)):
            sig = corridor.signals[k]
            if k in escort.given_up or sig.intersection not in self.xs:
                chain_by = math.inf
                continue
            arrival = arrivals[k]
            green_by = arrival - clearance_time(queues[k], st) - st.margin_s
            if k > escort.passed:
                # a queue reaching back to the previous signal holds that signal's queue (and
                # the ambulance in it) until it moves: it must get its green first
                link_m = sig.stop_m - corridor.signals[k - 1].stop_m
                if queues[k] * JAM_SPACING_M >= SPILLBACK_SHARE * link_m:
                    green_by = min(green_by, chain_by)
            chain_by = green_by
            escort.ahead[k] = (green_by, arrival, queues[k])
            if arrival - now > st.horizon_s and green_by - now > st.horizon_s:
                break
            view = readings.signals[sig.intersection]
            late = escort.late.get(k)
            if late is not None:
                other = self._late_step(escort, k, view, late, now)
                if other is not None:
                    claims.setdefault(sig.intersection, []).append(
                        Claim(escort.request.vehicle, escort.request.priority, arrival, (other,))
                    )
                    continue
            pause_until, paused_at = escort.paused.get(k, (-math.inf, math.inf))
            if now < pause_until and escort.moved_at < paused_at:
                continue  # until the pause ends, or the ambulance moves again
            escort.paused.pop(k, None)
            flushing = escort.flushing.get(k)
            flush = escort.flush[k]
            if flushing is not None and flush is not None:
                until, since = flushing
                if now < until and escort.moved_at < since:
                    claims.setdefault(sig.intersection, []).append(
                        Claim(escort.request.vehicle, escort.request.priority, arrival, (flush,))
                    )
                    continue
                del escort.flushing[k]
            if (
                self.mode is EscortMode.CORRIDOR
                and flush is not None
                and self._pre_flush(escort, k, s, view, flush, (green_by, arrival, queues[k]), now)
            ):
                claims.setdefault(sig.intersection, []).append(
                    Claim(escort.request.vehicle, escort.request.priority, arrival, (flush,))
                )
                continue
            if k in escort.since:
                # A hold is futile when the ambulance stands still through its own green:
                # time the signal spent serving another escort (a conflict it lost) or
                # changing over does not count.
                ours = view.phase in sig.phases and not view.in_clearance
                serving_since = max(escort.since[k], view.green_since) if ours else now
                if (
                    now - serving_since >= st.futile_hold_s
                    and now - escort.moved_at >= st.futile_hold_s
                ):
                    del escort.since[k]
                    if flush is not None and k not in escort.flushing:
                        # the ambulance waits in a queue its own phase does not move (the
                        # lane it must leave to reach its turn pocket): flush that queue first
                        escort.flushing[k] = (now + st.pause_s, now)
                        trace.events.append(
                            (now, sig.intersection, f"ambulance blocked: flushing phase {flush}")
                        )
                        claims.setdefault(sig.intersection, []).append(
                            Claim(
                                escort.request.vehicle, escort.request.priority, arrival, (flush,)
                            )
                        )
                    else:
                        escort.paused[k] = (now + st.pause_s, now)
                        trace.events.append((now, sig.intersection, "ambulance not moving: paused"))
                    continue
                if now - escort.since[k] > st.max_hold_s:
                    escort.given_up.add(k)
                    del escort.since[k]
                    trace.events.append((now, sig.intersection, "held too long: given up"))
                    continue
            elif self._due(sig, view, s, green_by, now):
                escort.since[k] = now
                trace.events.append((now, sig.intersection, "preemption starts"))
            else:
                continue
            claims.setdefault(sig.intersection, []).append(
                Claim(escort.request.vehicle, escort.request.priority, arrival, sig.phases)
            )

    # ------------------------------------------------------------------ conflicts: late greens

    def _plan_late(self, active: list[_Escort], readings: Readings) -> None:
        """Make room at contested signals by slowing the losing escort upstream.

        Two escorts that reach one signal on phases with nothing in common are served in
        ``_resolve``'s order. The loser's green there can start no sooner than the winner's
        arrival + its passage (``crossed_m`` at its speed, and ``release_lag_s``) + the
        signal's change interval between their phases. The loser rolls up to that red (and
        to the queue standing in its lane), and keeps at least ``min_roll_mps`` only if it
        arrives late enough (``red_approach``). When its predicted arrival is earlier than
        that, the signal before the contested one on its route gives it its green late, so
        that it brakes for that red and is released while still rolling: as late as loses
        the time needed, never so late that it falls below ``min_roll_mps``."""
        now, st = readings.time_s, self.settings
        wanted: dict[tuple[str, int], tuple[float, str]] = {}
        for lo in active:
            for kl in range(lo.passed, len(lo.corridor.signals)):
                arr_l = lo.arrivals[kl]
                if not arr_l - now <= st.horizon_s:
                    break
                need = max(
                    (self._room(hi, lo, kl) for hi in active if hi is not lo), default=0.0
                )
                j = kl - 1
                if need <= 0.0 or j < lo.passed or j in lo.late_dropped:
                    continue
                key = (lo.request.vehicle, j)
                if need > wanted.get(key, (0.0, ""))[0]:
                    wanted[key] = (need, lo.corridor.signals[kl].intersection)
        for lo in active:
            for j, old in list(lo.late.items()):
                if not old.frozen and (lo.request.vehicle, j) not in wanted:
                    del lo.late[j]
                    lo.trace.events.append(
                        (now, lo.corridor.signals[j].intersection, "late green: not needed")
                    )
        for (vehicle, j), (need, conflict) in wanted.items():
            lo = self.escorts[vehicle]
            planned = lo.late.get(j)
            if planned is not None and planned.frozen:
                continue
            sig = lo.corridor.signals[j]
            if j in lo.given_up or sig.intersection not in self.xs:
                continue
            v = lo.corridor.speed_at(sig.stop_m)
            q = lo.queues[j]
            n, lost = self._slowdown(v, q, need)
            if lost < 0.5:
                continue
            green = lo.arrivals[j] - (brake_point_m(v, st) + round(q) * JAM_SPACING_M) / v + n
            if planned is None:
                lo.trace.events.append(
                    (now, sig.intersection, f"late green for {conflict}: lose {lost:.1f} s")
                )
            lo.late[j] = _Late(green, lost, conflict)

    def _room(self, hi: _Escort, lo: _Escort, kl: int) -> float:
        """Seconds escort ``lo`` must arrive later at its signal ``kl`` for its green there
        to come, after ``hi``'s passage, while it is still rolling (0: none, or ``hi`` does
        not go first there, or their phases are compatible)."""
        st, sig_l = self.settings, lo.corridor.signals[kl]
        x_id = sig_l.intersection
        if x_id not in self.xs or kl in lo.given_up:
            return 0.0
        kw = next(
            (
                k
                for k in range(hi.passed, len(hi.corridor.signals))
                if hi.corridor.signals[k].intersection == x_id
            ),
            None,
        )
        if kw is None or kw in hi.given_up:
            return 0.0
        sig_w = hi.corridor.signals[kw]
        if set(sig_w.phases) & set(sig_l.phases):
            return 0.0
        arr_w, arr_l = hi.arrivals[kw], lo.arrivals[kl]
        if not (math.isfinite(arr_w) and math.isfinite(arr_l)):
            return 0.0
        if _rank(hi.request, arr_w) >= _rank(lo.request, arr_l):
            return 0.0
        v_w = hi.corridor.speed_at(sig_w.stop_m)
        change = _dur(self.rules[x_id], sig_w.phases[0], sig_l.phases[0])
        green = arr_w + st.crossed_m / v_w + st.release_lag_s + change
        v_l = lo.corridor.speed_at(sig_l.stop_m)
        q = lo.queues[kl]
        roll = self._roll_limit(v_l, q)
        earliest = green + (brake_point_m(v_l, st) + round(q) * JAM_SPACING_M) / v_l - roll
        return earliest - arr_l

    def _roll_limit(self, v: float, queue: float) -> float:
        """The latest green (seconds after the ambulance passes the brake point) that keeps
        it at ``min_roll_mps`` or faster (-inf: none does)."""
        st = self.settings
        best = -math.inf
        for n in range(0, 61):
            if red_approach(v, queue, n, st)[1] < st.min_roll_mps:
                break
            best = float(n)
        return best

    def _slowdown(self, v: float, queue: float, need: float) -> tuple[float, float]:
        """The green's delay after the brake point that loses about ``need`` seconds
        (the least that loses as much, else the most that keeps ``min_roll_mps``), and the
        time it loses."""
        st = self.settings
        chosen = (0.0, 0.0)
        for n in range(0, 61):
            lost, vmin = red_approach(v, queue, n, st)
            if vmin < st.min_roll_mps:
                break
            chosen = (float(n), lost)
            if lost >= need:
                break
        return chosen

    def _late_step(
        self, escort: _Escort, k: int, view: SignalView, late: _Late, now: float
    ) -> int | None:
        """Signal ``k`` under a late green: the phase to show meanwhile, or None once its
        own phase must be asked for (a preemption from then on)."""
        sig = escort.corridor.signals[k]
        x_id, trace = sig.intersection, escort.trace
        rules = self.rules[x_id]
        target = sig.phases[0]
        others = [q for q in range(len(rules.min_green_s)) if q not in sig.phases]
        if not others:
            del escort.late[k]
            return None
        if view.phase in sig.phases:
            back = min(
                _dur(rules, view.phase, q) + rules.min_green_s[q] + _dur(rules, q, target)
                for q in others
            )
            if view.in_clearance or now + back > late.green_s:
                # its phase comes (or stays) anyway: no late green here
                del escort.late[k]
                escort.since.setdefault(k, now)
                escort.late_dropped.add(k)
                trace.events.append((now, x_id, "late green: no room, dropped"))
                return None
            escort.since.pop(k, None)  # its hold (if any) gives way to the late green
            demand = self._demand(x_id)
            return max(others, key=lambda q: (demand[q], -q))
        lead = self._lead(x_id, view, target, now, exact=True)
        if now + lead + 1.0 >= late.green_s:
            del escort.late[k]
            escort.late_dropped.add(k)  # done: its green comes now, and is held
            escort.since[k] = now
            trace.events.append((now, x_id, "late green: preemption starts"))
            return None
        if now + lead + 3.0 >= late.green_s:
            late.frozen = True
        return view.phase

    def _due(
        self, sig: CorridorSignal, view: SignalView, s: float, green_by: float, now: float
    ) -> bool:
        """Whether signal ``sig`` must be asked for the ambulance's phase now, for its green
        to start by ``green_by``."""
        st = self.settings
        if self.mode is EscortMode.LOCAL:
            return sig.stop_m - s <= st.local_range_m
        target = view.phase if view.phase in sig.phases else sig.phases[0]
        lead = self._lead(sig.intersection, view, target, now)
        return now + lead + 1.0 >= green_by

    def _lead(
        self, x_id: str, view: SignalView, target: int, now: float, exact: bool = False
    ) -> float:
        """Seconds from asking for ``target`` to its green (or, when it is green now, the
        shortest time to leave it and come back: holding starts when that no longer fits).

        During a change interval the time left is not reported: it is bounded by the
        longest interval into the new phase, or (``exact``) taken from the change this
        controller saw begin (the phase shown before and when it was last seen green)."""
        rules = self.rules[x_id]
        n = len(rules.min_green_s)
        seen = self._changing.get(x_id)
        if exact and view.in_clearance and seen is not None and seen[0] != view.phase:
            into = max(seen[1] + _dur(rules, seen[0], view.phase) - now, 0.0)
            if view.phase == target:
                return into
            return into + rules.min_green_s[view.phase] + _dur(rules, view.phase, target)
        if view.phase == target and not view.in_clearance:
            back = [
                _dur(rules, target, q) + rules.min_green_s[q] + _dur(rules, q, target)
                for q in range(n)
                if q != target
            ]
            return min(back, default=0.0)
        if view.in_clearance:
            into = max((_dur(rules, q, view.phase) for q in range(n) if q != view.phase), default=0)
            if view.phase == target:
                return into
            return into + rules.min_green_s[view.phase] + _dur(rules, view.phase, target)
        left = max(rules.min_green_s[view.phase] - (now - view.green_since), 0.0)
        return left + _dur(rules, view.phase, target)

    def _flush_phase(self, sig: CorridorSignal) -> int | None:
        """The phase giving priority green to most links from the other lanes of the
        ambulance's approach edge (None when the edge has no other lane at the signal)."""
        x = self.xs.get(sig.intersection)
        if x is None or not sig.other_lanes:
            return None
        others = set(sig.other_lanes)
        links = [link.index for link in x.links if any(i in others for i, _ in link.movements)]
        if not links:
            return None
        served = [sum(p.state[i] == "G" for i in links) for p in x.phases]
        best = max(range(len(served)), key=served.__getitem__)
        return best if served[best] > 0 and best not in sig.phases else None

    def _pre_flush(
        self,
        escort: _Escort,
        k: int,
        s: float,
        view: SignalView,
        flush: int,
        due: tuple[float, float, float],
        now: float,
    ) -> bool:
        """Whether signal ``k`` serves the other lanes of the ambulance's approach now
        (``due``: by when the ambulance's green should start, its arrival, and the queue
        in its own lanes).

        While the ambulance is still before its approach edge, the other lanes' queue can
        reach back past that edge's start (a short turn pocket behind a through queue):
        holding the ambulance's own phase early, to clear its pocket, only lets that queue
        grow and shut the pocket. So the other lanes are served instead, and the
        ambulance's own phase comes as late as it safely can (green ``margin_s`` before the
        arrival, its pocket's few vehicles moving off ahead of it), or once the ambulance
        is in its lane, or after ``pause_s``; once per signal, from when the ambulance's
        own hold would begin. Only while the ambulance's own lane holds its queue with room
        to spare (a late green clears a few vehicles, not a long queue)."""
        st, sig = self.settings, escort.corridor.signals[k]
        green_by, arrival, own = due
        started = escort.pre_flush.get(k)
        if started is None:
            if self._blocking(escort, k, s) < 1:
                return False
            if own * JAM_SPACING_M > sig.stop_m - sig.edge_m:
                return False
            if k not in escort.since and not self._due(sig, view, s, green_by, now):
                return False
            escort.pre_flush[k] = started = now
            escort.trace.events.append(
                (now, sig.intersection, f"queue past its lane: flushing phase {flush}")
            )
        if math.isnan(started):
            return False  # done for this signal
        flowing = view.phase == flush and not view.in_clearance
        late_green = arrival - st.margin_s
        if (
            s >= sig.edge_m
            or now - started >= st.pause_s
            or (flowing and self._due(sig, view, s, late_green, now))
        ):
            escort.pre_flush[k] = math.nan
            if k in escort.since:
                escort.since[k] = now  # the hold's futility is counted from here
            return False
        return True

    def _blocking(self, escort: _Escort, k: int, s: float) -> float:
        """Vehicles per lane of the other lanes' queue at signal ``k`` beyond the start of
        the approach edge, while the ambulance is still before it (0 otherwise)."""
        sig = escort.corridor.signals[k]
        if not s < sig.edge_m or escort.others[k].size == 0:
            return 0.0
        room = (sig.stop_m - sig.edge_m) / JAM_SPACING_M
        return max(0.0, self._queue(escort.others[k]) - room)

    # ------------------------------------------------------------------ conflicts

    def _upcoming(self, escort: _Escort) -> dict[str, int]:
        """The signals still ahead of an escort that it may ask for: intersection -> index."""
        if escort.lost or not escort.tracker.started or self.mode is EscortMode.NONE:
            return {}
        sigs = escort.corridor.signals
        return {
            sigs[k].intersection: k
            for k in range(len(sigs) - 1, escort.passed - 1, -1)
            if k not in escort.given_up and sigs[k].intersection in self.xs
        }

    def _find_contested(self) -> set[str]:
        """Signals ahead of two escorts whose phases there have nothing in common."""
        found: set[str] = set()
        escorts = list(self.escorts.values())
        ahead = [self._upcoming(e) for e in escorts]
        for i, a in enumerate(escorts):
            for j in range(i + 1, len(escorts)):
                b = escorts[j]
                for x_id in ahead[i].keys() & ahead[j].keys():
                    pa = a.corridor.signals[ahead[i][x_id]].phases
                    pb = b.corridor.signals[ahead[j][x_id]].phases
                    if not set(pa) & set(pb):
                        found.add(x_id)
        return found

    def _plan_interleaves(self, readings: Readings) -> None:
        """At a contested signal, serve the loser's approach before the winner's green.

        The loser's green there comes only after the winner has crossed and the change
        interval has run; meanwhile its approach stands red and the queue it will meet grows.
        When the winner's green is not needed yet, the signal serves the loser's phase first
        (L -> W -> L): it starts as late as still lets it discharge the loser's queue (start-up
        lost time + a headway per vehicle, at least the minimum green) and go back to the
        winner's phase through the change interval by the winner's ``green_by`` (its own
        queue's clearance and ``margin_s`` before its arrival), and it ends when going back
        must begin. Only when the minimum green fits; otherwise the signal is left to the
        holds (the winner first, then the loser). Once per signal and loser."""
        now = readings.time_s
        for x_id, il in list(self.interleaves.items()):
            w, lo = self.escorts.get(il.winner), self.escorts.get(il.loser)
            kw = self._upcoming(w).get(x_id) if w is not None else None
            kl = self._upcoming(lo).get(x_id) if lo is not None else None
            plan_w = w.ahead.get(kw) if w is not None and kw is not None else None
            if lo is None or kl is None or plan_w is None:
                del self.interleaves[x_id]
                continue
            view = readings.signals[x_id]
            rules = self.rules[x_id]
            if view.phase != il.phase:  # taken away meanwhile (cannot happen: declared)
                left = self._lead(x_id, view, il.phase, now) + rules.min_green_s[il.phase]
            elif view.in_clearance:  # still changing over: green as planned
                left = max(il.green_s - now, 0.0) + rules.min_green_s[il.phase]
            else:
                left = max(rules.min_green_s[il.phase] - (now - view.green_since), 0.0)
            if now + left + _dur(rules, il.phase, il.back) + 1.0 >= plan_w[0]:
                del self.interleaves[x_id]
                lo.trace.events.append((now, x_id, f"back to {il.winner}'s phase"))
        if len(self.escorts) < 2:
            return
        for x_id in self._contested - self.interleaves.keys():
            view = readings.signals[x_id]
            if view.in_clearance:
                continue
            plan = self._interleave_for(x_id, view, now)
            if plan is not None:
                self.interleaves[x_id] = plan
                lo = self.escorts[plan.loser]
                lo.interleaved.add(self._upcoming(lo)[x_id])
                lo.trace.events.append(
                    (now, x_id, f"served before {plan.winner}: phase {plan.phase}")
                )

    def _interleave_for(self, x_id: str, view: SignalView, now: float) -> _Interleave | None:
        """An L -> W -> L plan at ``x_id`` that should start now, if any (see
        ``_plan_interleaves``)."""
        st, rules = self.settings, self.rules[x_id]
        wanting = []
        for e in self.escorts.values():
            k = self._upcoming(e).get(x_id)
            if k is None or k not in e.ahead:
                continue
            wanting.append((e, k, e.ahead[k]))
        ranked = sorted(
            wanting, key=lambda w: (-w[0].request.priority, w[2][1], w[0].request.vehicle)
        )
        if len(ranked) < 2:
            return None
        w, kw, (green_w, arr_w, _) = ranked[0]
        phases_w = w.corridor.signals[kw].phases
        for lo, kl, (_, arr_l, queue_l) in ranked[1:]:
            phases_l = lo.corridor.signals[kl].phases
            if set(phases_w) & set(phases_l) or kl in lo.interleaved:
                continue
            if queue_l < 0.5 or arr_l < arr_w or view.phase in phases_l:
                continue
            if kl in lo.since and view.phase not in phases_w:
                continue  # the loser's own hold already runs the signal
            target = phases_l[0]
            back = view.phase if view.phase in phases_w else phases_w[0]
            lead = self._lead(x_id, view, target, now)
            if view.phase == target:
                continue
            min_l = rules.min_green_s[target]
            need = max(min_l, st.lost_time_s + st.headway_s * queue_l)
            ret = _dur(rules, target, back)
            if now + lead + min_l + ret > green_w:
                continue  # not even a minimum green fits before the winner's
            if now + 1.0 + lead + need + ret <= green_w:
                continue  # later: as late as still flushes the queue
            return _Interleave(
                w.request.vehicle, lo.request.vehicle, target, back, green_w, now + lead
            )
        return None

    def _resolve(self, x_id: str, claims: list[Claim], view: SignalView) -> tuple[int, str]:
        """The phase a contested signal serves, and whose claim won."""
        ranked = sorted(claims, key=lambda c: (-c.priority, c.arrival_s, c.vehicle))
        allowed = list(ranked[0].phases)
        for c in ranked[1:]:
            both = [p for p in allowed if p in c.phases]
            if both:
                allowed = both
        phase = view.phase if view.phase in allowed else allowed[0]
        return phase, ranked[0].vehicle

    # ------------------------------------------------------------------ estimates, recovery

    def _queue(self, lanes: IntArray) -> float:
        if lanes.size == 0:
            return 0.0
        est = self.estimator
        return float((est.queue[lanes] + est.approaching[lanes]).max())

    def _demand(self, x_id: str) -> list[float]:
        queue = self.estimator.queue
        return [float(queue[ln].max()) if ln.size else 0.0 for ln in self._phase_lanes[x_id]]

    def _observe(self, x_id: str, view: SignalView, now: float) -> None:
        if not view.in_clearance:
            self._changing[x_id] = (view.phase, now)
        last = self._last_green.get(x_id)
        if last is None:
            last = self._last_green[x_id] = [now] * len(self.xs[x_id].phases)
        if not view.in_clearance:
            last[view.phase] = now

    def _start_recovery(self, x_id: str, view: SignalView, now: float) -> None:
        rules = self.rules[x_id]
        st = self.settings
        settings = RecoverySettings(
            st.lost_time_s,
            st.headway_s,
            rules.min_green_s,
            st.recovery_max_green_s,
            st.recovery_max_s,
        )
        held = view.phase
        recovery = Recovery(now, held, self._last_green[x_id], self._demand(x_id), settings)
        if not recovery.done:
            self.recoveries[x_id] = recovery

    def trace_of(self, vehicle: str) -> EscortTrace | None:
        return self.traces.get(vehicle)

    @property
    def active(self) -> Mapping[str, _Escort]:
        return self.escorts


def _rank(req: EscortRequest, arrival_s: float) -> tuple[int, float, str]:
    """Who goes first at a contested signal (lowest first), as ``_resolve`` orders claims."""
    return (-req.priority, arrival_s, req.vehicle)


def _lanes(index: Mapping[str, int], lanes: tuple[str, ...]) -> IntArray:
    return np.array(sorted({index[lane] for lane in lanes if lane in index}), dtype=np.int64)


def _dur(rules: SignalRules, a: int, b: int) -> float:
    if a == b:
        return 0.0
    return sum(step.duration_s for step in rules.intervals[(a, b)])
