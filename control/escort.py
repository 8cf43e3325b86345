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
deadlock. A lost GPS feed is dead-reckoned for ``lost_after_s``, then the escort's holds are
released and the normal controller runs those signals until fixes return.
"""

from __future__ import annotations

import dataclasses
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
    "clearance_time",
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
    local_range_m: float = 150.0
    """``local`` mode: distance to the stop line at which the signal is asked."""
    horizon_s: float = 150.0
    """Signals the ambulance reaches later than this are not planned yet."""
    accel_mps2: float = 2.0
    """Acceleration assumed when predicting an arrival from below the speed limit."""
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


CorridorSource = Callable[[EscortRequest], Corridor]
"""Turns a request's route into a corridor from map data (``netmodel/corridors.py``)."""


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
        self.escorts: dict[str, _Escort] = {}
        self.traces: dict[str, EscortTrace] = {}
        self.recoveries: dict[str, Recovery] = {}
        self._held: dict[str, str] = {}
        """Signals preempted at the last step, and for which vehicle."""

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
        claims: dict[str, list[Claim]] = {}
        for escort in self.escorts.values():
            self._escort_step(escort, readings, claims)
        overrides: dict[str, PhaseRequest] = {}
        notes = dict(decision.notes)
        held: dict[str, str] = {}
        for x_id, wanted in claims.items():
            phase, winner = self._resolve(x_id, wanted, readings.signals[x_id])
            overrides[x_id] = PhaseRequest(x_id, phase, hold=True)
            held[x_id] = winner
            notes[x_id] = f"escort {winner}: phase {phase} held"
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

    def _escort_step(
        self, escort: _Escort, readings: Readings, claims: dict[str, list[Claim]]
    ) -> None:
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
        arrivals: list[float] = []
        while (
            escort.passed < len(corridor.signals)
            and tracker.started
            and not lost
            and s >= corridor.signals[escort.passed].stop_m + st.passed_m
        ):
            sig = corridor.signals[escort.passed]
            if escort.passed in escort.since:
                trace.events.append((now, sig.intersection, "through: released"))
            escort.since.pop(escort.passed, None)
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
        if self.mode is EscortMode.NONE or lost or not tracker.started:
            escort.since.clear()
            return
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
            if arrival - now > st.horizon_s and green_by - now > st.horizon_s:
                break
            view = readings.signals[sig.intersection]
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

    def _lead(self, x_id: str, view: SignalView, target: int, now: float) -> float:
        """Seconds from asking for ``target`` to its green (or, when it is green now, the
        shortest time to leave it and come back: holding starts when that no longer fits)."""
        rules = self.rules[x_id]
        n = len(rules.min_green_s)
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


def _lanes(index: Mapping[str, int], lanes: tuple[str, ...]) -> IntArray:
    return np.array(sorted({index[lane] for lane in lanes if lane in index}), dtype=np.int64)


def _dur(rules: SignalRules, a: int, b: int) -> float:
    if a == b:
        return 0.0
    return sum(step.duration_s for step in rules.intervals[(a, b)])
