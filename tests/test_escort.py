"""The escort controller on a made-up crossing, through the real envelope, no SUMO.

crossing(): phase 0 (links 0, 1 from lanes in0, in1) and phase 1 (links 2, 3 from in2, in3);
0 -> 1 changes through 3 s yellow + 2 s all-red, 1 -> 0 through 3 s yellow; min green 5 s.
An ambulance on lanes in0/in1 needs phase 0; one on in2/in3 needs phase 1. Its GPS comes
from a small kinematic model: it drives at 13.9 m/s and stops at the line on red.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citybrain.control.corridor import Corridor, CorridorSignal, EscortRequest, Polyline
from citybrain.control.envelope import EnvelopeTiming, SafetyEnvelope
from citybrain.control.escort import EscortController, EscortSettings, clearance_time
from citybrain.control.port import Decision, GpsFix, Layout, PhaseRequest, Readings
from citybrain.control.recovery import Recovery, RecoverySettings
from citybrain.netmodel.layout import DetectorPlacement, build_layout
from citybrain.sim.monitor import SignalMonitor

from .test_envelope import crossing

STOP_M, EXIT_M, SPEED = 900.0, 915.0, 13.9


class Road:
    def length(self, lane: str) -> float:
        return 150.0

    def predecessor(self, lane: str) -> str | None:
        return None


def layout() -> Layout:
    return build_layout((crossing(),), Road(), DetectorPlacement())


def corridor(vehicle: str, phase: int) -> Corridor:
    """A straight 1.5 km route through the crossing, on the approach phase ``phase`` serves."""
    lanes = ("in0", "in1") if phase == 0 else ("in2", "in3")
    links = (0, 1) if phase == 0 else (2, 3)
    sig = CorridorSignal("x", STOP_M, EXIT_M, lanes, links, (phase,))
    y = 0.0 if phase == 0 else 5000.0  # two separate lines: only the map links them
    line = Polyline(((0.0, y), (1500.0, y)))
    return Corridor(vehicle, line, (0.0,), (SPEED,), (sig,))


class Stub:
    """A normal controller that always asks for the same phase."""

    name = "stub"
    uses_detectors = False
    signal_program: str | None = None

    def __init__(self, phase: int) -> None:
        self.phase = phase

    def decide(self, readings: Readings) -> Decision:
        return Decision((PhaseRequest("x", self.phase),))


@dataclass
class Ambulance:
    vehicle: str
    phase: int
    s: float = 0.0
    start_s: float = 0.0
    gps_until: float = float("inf")
    gps_back: float = float("inf")
    """No fixes from ``gps_until`` until ``gps_back``."""
    passed_at: float | None = None
    stops: int = 0
    blocked: tuple[float, float] = (0.0, 0.0)
    """Stands still from ``blocked[0]`` until ``blocked[1]`` (stuck behind something the
    ambulance's own phase does not serve)."""
    _stopped: bool = field(default=False, repr=False)

    def move(self, t: float, state: str) -> None:
        """One second: drive on, unless the light is red and the stop line is reached."""
        if t < self.start_s or self.s > 1400:
            return
        if self.blocked[0] <= t < self.blocked[1]:
            self._stopped = True
            return
        link = 0 if self.phase == 0 else 2
        red = state[link] not in "Gg"
        if red and self.s <= STOP_M < self.s + SPEED + 1:
            if not self._stopped:
                self.stops += 1
            self.s, self._stopped = STOP_M - 1.0, True
            return
        self._stopped = False
        before = self.s
        self.s += SPEED
        if before < STOP_M <= self.s:
            self.passed_at = t


@dataclass
class World:
    escort: EscortController
    ambulances: list[Ambulance]
    queue: dict[str, float]
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(1))
    shown: list[str] = field(default_factory=list)
    requests: list[PhaseRequest] = field(default_factory=list)

    def run(self, seconds: int, base_at: Callable[[float], int] | None = None) -> None:
        x = crossing()
        lay = self.escort.layout
        env = SafetyEnvelope(x, EnvelopeTiming(), 0.0)
        monitor = SignalMonitor([x], EnvelopeTiming())
        cam_q = np.array([self.queue.get(c.lane, 0.0) for c in lay.cameras], dtype=np.int64)
        for a in self.ambulances:
            prio = _PRIORITY.get(a.vehicle, 1)
            self.escort.request(EscortRequest(a.vehicle, ("e",), priority=prio))
        for t in range(seconds):
            now = float(t)
            if base_at is not None:
                assert isinstance(self.escort.base, Stub)
                self.escort.base.phase = base_at(now)
            fixes = tuple(
                GpsFix(a.vehicle, now, *self._noisy(a), SPEED if not a._stopped else 0.0)
                for a in self.ambulances
                if a.start_s <= now and not a.gps_until <= now < a.gps_back
            )
            readings = Readings(
                now,
                np.zeros(len(lay.loops), dtype=np.int64),
                np.zeros(len(lay.loops)),
                cam_q.copy(),
                cam_q.copy(),
                {"x": env},
                fixes,
            )
            decision = self.escort.decide(readings)
            (req,) = [r for r in decision.requests if r.intersection == "x"]
            state = env.step(now, req.phase, req.hold)
            monitor.observe(now, "x", state, req.hold)
            self.shown.append(state)
            self.requests.append(req)
            for a in self.ambulances:
                a.move(now, state)
        monitor.raise_if_any()  # no envelope rule broken, ever

    def _noisy(self, a: Ambulance) -> tuple[float, float]:
        y = 0.0 if a.phase == 0 else 5000.0
        nx, ny = self.rng.normal(size=2) * 4.0
        return a.s + nx, y + ny


_PRIORITY: dict[str, int] = {}


def world(
    base_phase: int,
    ambulances: list[Ambulance],
    queue: dict[str, float] | None = None,
    mode: str = "corridor",
    **settings: float,
) -> World:
    corridors = {a.vehicle: corridor(a.vehicle, a.phase) for a in ambulances}
    escort = EscortController(
        Stub(base_phase),
        mode,
        layout(),
        lambda req: corridors[req.vehicle],
        EnvelopeTiming(),
        EscortSettings(**settings),
    )
    return World(escort, ambulances, queue or {})


def green_start(w: World, phase: int, after: float = 0.0) -> float:
    want = "GGrr" if phase == 0 else "rrGG"
    for t, state in enumerate(w.shown):
        if t >= after and state == want and (t == 0 or w.shown[t - 1] != want):
            return float(t)
    raise AssertionError(f"phase {phase} never turned green after {after}")


# --------------------------------------------------------------------------- clearance


def test_clearance_time_is_lost_time_plus_headways_plus_crossing() -> None:
    s = EscortSettings(lost_time_s=1.0, headway_s=2.0, cross_s=3.0)
    assert clearance_time(0.0, s) == 0.0
    assert clearance_time(0.3, s) == 0.0
    assert clearance_time(1.0, s) == pytest.approx(6.0)
    assert clearance_time(8.0, s) == pytest.approx(1.0 + 16.0 + 3.0)


@pytest.mark.parametrize("queue", [0.0, 4.0, 10.0])
def test_green_starts_in_time_to_flush_the_queue_before_the_ambulance(queue: float) -> None:
    # cross street served by the normal controller; ambulance on phase 0 arrives at ~64.7 s
    amb = Ambulance("amb", 0)
    w = world(1, [amb], {"in0": queue, "in1": queue})
    w.run(90)
    s = w.escort.settings
    arrival = STOP_M / SPEED
    needed = arrival - clearance_time(queue, s) - s.margin_s
    start = green_start(w, 0, after=6.0)
    assert needed - 3.0 <= start <= needed + 0.5  # in time, and not needlessly early
    assert amb.stops == 0 and amb.passed_at is not None
    # the green is held (declared) until the ambulance is through, then handed back
    held = [t for t, r in enumerate(w.requests) if r.hold]
    assert held and min(held) < start and max(held) <= (EXIT_M + s.passed_m) / SPEED + 3
    assert w.requests[-1].phase == 1 and not w.requests[-1].hold
    assert w.shown[-1] == "rrGG"


def test_without_escort_the_same_ambulance_stops() -> None:
    amb = Ambulance("amb", 0)
    w = world(1, [amb], {"in0": 4.0, "in1": 4.0}, mode="none")
    w.run(90)
    assert amb.stops == 1
    assert not any(r.hold for r in w.requests)


def test_local_mode_asks_only_within_range() -> None:
    amb = Ambulance("amb", 0)
    w = world(1, [amb], mode="local")
    w.run(90)
    first = min(t for t, r in enumerate(w.requests) if r.hold)
    # asked once the GPS estimate is within 150 m: (900 - 150) / 13.9 = 54 s
    assert 52 <= first <= 56


# --------------------------------------------------------------------------- recovery


def test_recovery_serves_the_longest_waiting_phases_first() -> None:
    rs = RecoverySettings(lost_time_s=1.0, headway_s=2.0, min_green_s=(5.0, 5.0, 5.0))
    # phase 0 was held; phase 2 has waited since t=10, phase 1 since t=40; both have queues
    r = Recovery(100.0, 0, last_green_s=(100.0, 40.0, 10.0), demand=(3, 4, 6), settings=rs)
    assert r.order == [2, 1]

    @dataclass
    class View:
        phase: int
        in_clearance: bool = False
        green_since: float = 0.0

    assert r.request(100.0, View(0), (3, 4, 6)) == 2
    assert r.request(104.0, View(2, green_since=104.0), (3, 4, 6)) == 2
    # sized by the queue it found: 1 + 2 x 6 = 13 s of green
    assert r.request(116.0, View(2, green_since=104.0), (3, 4, 2)) == 2
    assert r.request(117.0, View(2, green_since=104.0), (3, 4, 0)) == 1
    # a phase whose queue is gone after its minimum green is done early
    assert r.request(121.0, View(1, green_since=121.0), (3, 4, 0)) == 1
    assert r.request(126.0, View(1, green_since=121.0), (3, 0, 0)) is None
    assert r.done and r.served == [2, 1]


def test_after_the_escort_the_cross_street_is_served_before_the_main_road() -> None:
    # the normal controller would keep the main road (phase 0) green; the cross street has
    # 8 vehicles per lane waiting: after the ambulance passes, the recovery serves them first
    amb = Ambulance("amb", 0)
    w = world(0, [amb], {"in2": 8.0, "in3": 8.0})
    w.run(130)
    assert amb.stops == 0
    released = max(t for t, r in enumerate(w.requests) if r.hold) + 1
    served = green_start(w, 1, after=released)
    assert served <= released + 5  # at once, through the change interval
    s = w.escort.settings
    need = s.lost_time_s + s.headway_s * 8
    back = green_start(w, 0, after=served)
    assert need <= back - served <= need + 6  # sized by the queue, then handed back
    assert w.requests[-1].phase == 0


# --------------------------------------------------------------------------- conflicts


@pytest.mark.parametrize(("prio_a", "prio_b", "first"), [(1, 2, "b"), (2, 1, "a"), (1, 1, "b")])
def test_two_crossing_escorts_are_served_by_priority_without_deadlock(
    prio_a: int, prio_b: int, first: str
) -> None:
    _PRIORITY.update(a=prio_a, b=prio_b)
    try:
        a = Ambulance("a", 0, start_s=2.0)  # equal priorities: b arrives 2 s earlier
        b = Ambulance("b", 1)
        w = world(0, [a, b])
        w.run(160)
    finally:
        _PRIORITY.clear()
    assert a.passed_at is not None and b.passed_at is not None  # both get through
    winner, loser = (b, a) if first == "b" else (a, b)
    assert winner.passed_at < loser.passed_at
    assert winner.stops == 0
    assert loser.passed_at - winner.passed_at < 30  # its turn comes right after
    assert not w.escort.escorts["a"].given_up and not w.escort.escorts["b"].given_up


def test_waiting_out_another_escorts_hold_is_not_a_futile_hold() -> None:
    # b outranks a and comes 12 s after it, with a long queue to flush first: a must stand
    # at the red through b's hold, for longer than futile_hold_s, before its own green can
    # come. That wait is not a futile hold of a's green (there is none yet): a is served
    # right after b, not paused.
    _PRIORITY.update(a=1, b=2)
    try:
        a = Ambulance("a", 0)
        b = Ambulance("b", 1, start_s=12.0)
        # the normal controller prefers b's road all along
        w = world(1, [a, b], {"in2": 8.0, "in3": 8.0})
        w.run(160)
    finally:
        _PRIORITY.clear()
    assert a.passed_at is not None and b.passed_at is not None
    assert b.passed_at < a.passed_at and b.stops == 0
    stood = a.passed_at - (STOP_M // SPEED)  # how long a stood at the line
    assert stood > w.escort.settings.futile_hold_s  # the case this test is about
    events = [e for _, _, e in w.escort.traces["a"].events]
    assert "ambulance not moving: paused" not in events, events
    assert a.stops == 1  # the wait b's hold forces, no more
    assert a.passed_at - b.passed_at < 12  # the change interval and a's start


# --------------------------------------------------------------------------- lost GPS


def test_lost_gps_feed_before_the_preemption_leaves_the_signal_to_the_controller() -> None:
    amb = Ambulance("amb", 0, gps_until=30.0)
    w = world(1, [amb], {"in0": 4.0, "in1": 4.0})
    w.run(120)
    assert not any(r.hold for r in w.requests)
    assert all(r.phase == 1 for r in w.requests)
    events = [e for _, _, e in w.escort.traces["amb"].events]
    assert "GPS lost: holds released" in events


def test_lost_gps_feed_during_a_hold_releases_it_and_the_city_moves_on() -> None:
    amb = Ambulance("amb", 0, gps_until=50.0)  # the feed dies while the green is held
    w = world(1, [amb], {"in0": 4.0, "in1": 4.0})
    w.run(200)
    held = [t for t, r in enumerate(w.requests) if r.hold]
    assert held and max(held) <= 50 + w.escort.settings.lost_after_s + 1
    # dead-reckoned meanwhile (the ambulance did get through on the held green) ...
    assert amb.passed_at is not None
    # ... and afterwards the normal controller runs the signal again
    assert w.shown[-1] == "rrGG" and w.requests[-1] == PhaseRequest("x", 1)


def test_fixes_coming_back_resume_the_escort() -> None:
    amb = Ambulance("amb", 0, gps_until=20.0, gps_back=40.0)
    w = world(1, [amb], {"in0": 4.0, "in1": 4.0})
    w.run(90)
    events = [e for _, _, e in w.escort.traces["amb"].events]
    assert events.index("GPS lost: holds released") < events.index("GPS back")
    assert any(r.hold for r in w.requests[40:])
    assert amb.stops == 0 and amb.passed_at is not None


def test_a_hold_the_ambulance_cannot_use_is_paused_and_asked_again() -> None:
    # 100 m before the stop line the ambulance stands for 80 s (stuck in a lane its phase
    # does not serve), after its green was asked for
    amb = Ambulance("amb", 0, blocked=(58.0, 138.0))
    w = world(1, [amb], {"in0": 4.0, "in1": 4.0})
    w.run(240)
    events = [(t, e) for t, _, e in w.escort.traces["amb"].events]
    paused = [t for t, e in events if e == "ambulance not moving: paused"]
    assert paused, events
    # while paused the normal controller runs the signal (no hold, its own phase 1)
    first = int(paused[0])
    pause = int(w.escort.settings.pause_s)
    assert not any(r.hold for r in w.requests[first + 1 : first + pause])
    assert "rrGG" in w.shown[first + 1 : first + pause + 1]
    # and once it moves again it is escorted through: asked again at once, its green as
    # soon as the envelope allows (a pause that has just begun still costs the normal
    # phase's minimum green and a change interval: 100 m short of the line, that can be a
    # stop the safety rules force)
    moved = amb.blocked[1]
    asked = [t for t, e in events if e == "preemption starts" and t >= moved]
    assert asked and asked[0] <= moved + 2  # the first step the GPS shows it moving
    x = crossing()
    soonest = EnvelopeTiming().min_green_s + x.yellow_s + x.all_red_s
    assert green_start(w, 0, after=asked[0]) - asked[0] <= soonest
    assert amb.passed_at is not None


def test_a_through_queue_past_a_short_pocket_is_served_before_the_ambulance_green() -> None:
    """The ambulance's lane (in2, phase 1) is a 30 m pocket beside a through lane (in0,
    phase 0) whose queue of 12 reaches back past the pocket's start: holding phase 1 early
    would only let that queue grow and shut the pocket. The escort serves phase 0 first,
    and phase 1 late: green ``margin_s`` before the arrival, and the ambulance never
    stops."""
    edge_m = STOP_M - 30.0
    sig = CorridorSignal("x", STOP_M, EXIT_M, ("in2",), (2,), (1,), ("in0",), edge_m=edge_m)
    route = Corridor("amb", Polyline(((0.0, 5000.0), (1500.0, 5000.0))), (0.0,), (SPEED,), (sig,))
    amb = Ambulance("amb", 1)
    escort = EscortController(
        Stub(1), "corridor", layout(), lambda req: route, EnvelopeTiming(), EscortSettings()
    )
    w = World(escort, [amb], {"in0": 12.0})
    w.run(120)
    events = [(t, e) for t, _, e in escort.traces["amb"].events]
    flushed = [t for t, e in events if e == "queue past its lane: flushing phase 0"]
    assert flushed and flushed[0] < edge_m / SPEED, events
    # phase 0 shown while the ambulance is on its way, although the controller wants 1
    assert "GGrr" in w.shown[int(flushed[0]) + 1 : int(edge_m / SPEED)]
    arrival = STOP_M / SPEED
    green = green_start(w, 1, after=flushed[0])
    margin = escort.settings.margin_s
    assert arrival - margin - 8.0 <= green <= arrival - 1.0  # late, and still in time
    assert amb.passed_at is not None and amb.stops == 0
    # without the queue past the pocket, phase 1 is simply held for the ambulance
    calm = World(
        EscortController(
            Stub(1), "corridor", layout(), lambda req: route, EnvelopeTiming(), EscortSettings()
        ),
        [Ambulance("amb", 1)],
        {"in0": 2.0},
    )
    calm.run(120)
    before = int(STOP_M / SPEED)  # (after it, the recovery serves phase 0)
    assert not any(r.phase == 0 for r in calm.requests[:before])
    assert not any("queue past" in e for _, _, e in calm.escort.traces["amb"].events)


# --------------------------------------------------------------------------- the envelope


@settings(max_examples=40, deadline=None)
@given(
    base=st.lists(st.integers(0, 1), min_size=20, max_size=20),
    starts=st.tuples(st.integers(0, 60), st.integers(0, 60)),
    gps_until=st.tuples(st.integers(5, 200), st.integers(5, 200)),
    prios=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    queue=st.integers(0, 20),
    mode=st.sampled_from(["corridor", "local"]),
)
def test_the_envelope_is_never_violated_under_escort(
    base: list[int],
    starts: tuple[int, int],
    gps_until: tuple[int, int],
    prios: tuple[int, int],
    queue: int,
    mode: str,
) -> None:
    _PRIORITY.update(a=prios[0], b=prios[1])
    try:
        a = Ambulance("a", 0, start_s=starts[0], gps_until=gps_until[0])
        b = Ambulance("b", 1, start_s=starts[1], gps_until=gps_until[1])
        w = world(0, [a, b], {"in0": queue, "in3": queue}, mode=mode)
        w.run(200, base_at=lambda t: base[int(t) // 10])  # the monitor checks every step
    finally:
        _PRIORITY.clear()
    # nothing is held forever: by the end every hold is released
    assert not w.requests[-1].hold
