"""The detector layer on synthetic readings: estimates near the truth, faults found and ended."""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

from citybrain.control.estimate import (
    EstimatorSettings,
    FaultEvent,
    FaultKind,
    TrafficEstimator,
)
from citybrain.control.model import (
    Intersection,
    SignalLink,
    phases_from_plan,
    transitions_from_plan,
)
from citybrain.control.port import DetectorKind, DetectorSpec, Layout, Readings, SignalView
from citybrain.sim.sensors import SensorModel, SensorSettings

from .test_envelope import PLAN, crossing

CYCLE = 58  # PLAN: in0/in1 green 0-30, change 30-35, in2/in3 green 35-55, change 55-58
STOP, UP, CAM = "cb_s_in0", "cb_u_in0", "cb_c_in0"
HISTORY_ONLY = 0.2


@dataclass(frozen=True)
class View:
    phase: int
    in_clearance: bool
    green_since: float


def plan_view(t: float) -> View:
    pos = t % CYCLE
    if pos < 35:
        return View(0, pos >= 30, t - pos)
    return View(1, pos >= 55, t - pos + 35)


def lane_layout(
    x: Intersection, stop: bool = True, upstream: bool = True, camera: bool = True
) -> Layout:
    """Like ``netmodel.layout.build_layout`` on 200 m lanes: loops at 1 m and 60 m, 100 m camera."""
    loops: list[DetectorSpec] = []
    cams: list[DetectorSpec] = []
    for lane in x.in_lanes:
        if stop:
            loops.append(DetectorSpec(f"cb_s_{lane}", DetectorKind.STOP_LOOP, x.id, lane, 1.0))
        if upstream:
            loops.append(DetectorSpec(f"cb_u_{lane}", DetectorKind.UPSTREAM_LOOP, x.id, lane, 60.0))
        if camera:
            cams.append(DetectorSpec(f"cb_c_{lane}", DetectorKind.CAMERA, x.id, lane, 100.0))
    return Layout((x,), tuple(loops), tuple(cams))


@dataclass
class LaneSim:
    """Lane ``in0``: one arrival every ``headway`` s at the upstream loop (seen by the camera
    3 s before), 4 s on to the stop line, a vertical queue there (its 9th place over the
    upstream loop, 13 places in the camera zone). On green a start-up wave sets one more place
    moving every second, and a vehicle leaves every 2 s. The truth is ``standing``."""

    headway: int = 5
    queue: int = 0
    moving: int = 0
    transit: list[int] = field(default_factory=list)
    next_out: int = 0
    green_since: int | None = None

    @property
    def standing(self) -> int:
        return self.queue - self.moving

    def step(self, t: int, green: bool) -> tuple[int, float, int, float, int, int]:
        if not green:
            self.green_since = None
        elif self.green_since is None:
            self.green_since = t
        s_c, s_o, u_c, u_o = 0, 0.0, 0, 0.0
        if t % self.headway == 0:
            if self.queue >= 9:  # the queue covers the upstream loop: join behind it
                self.queue += 1
            else:
                u_c, u_o = 1, 0.4
                self.transit.append(t + 4)
        for _ in [a for a in self.transit if a <= t]:
            self.transit.pop(0)
            if green and self.queue == 0 and s_c == 0:
                s_c, s_o = 1, 0.4
            else:
                self.queue += 1
        wave = 0 if self.green_since is None else t - self.green_since
        self.moving = min(self.queue, wave)
        if self.moving > 0 and t >= self.next_out and s_c == 0:
            if self.queue > 9 and self.moving >= 9:  # the queue moves over the upstream loop
                u_c, u_o = 1, 0.6
            self.queue -= 1
            self.moving = min(self.queue, wave)
            s_c, s_o = 1, 0.6
            self.next_out = t + 2
        if self.standing > 0 and self.moving == 0:
            s_o = 1.0
        if self.moving < 9 <= self.queue and u_c == 0:
            u_o = 1.0
        in_zone = min(self.queue, 13)
        coming = sum(1 for k in range(t + 1, t + 4) if k % self.headway == 0)  # last 40 m
        stood = max(0, in_zone - self.moving)
        return s_c, s_o, u_c, u_o, in_zone + len(self.transit) + coming, stood


Fault = Callable[[int, Readings, TrafficEstimator], None]


def run(
    est: TrafficEstimator,
    sim: LaneSim,
    start: int,
    end: int,
    faults: tuple[Fault, ...] = (),
    green: Callable[[int], bool] | None = None,
    check: Callable[[int], None] | None = None,
    noise: SensorModel | None = None,
) -> None:
    """Lane in0 from ``sim`` (green with the plan unless ``green`` says), other lanes empty."""
    loops = [d.id for d in est.layout.loops]
    cams = [d.id for d in est.layout.cameras]
    for t in range(start, end):
        signals: dict[str, SignalView] = {}
        if green is None:
            view = plan_view(t)
            signals["x"] = view
            is_green = view.phase == 0 and not view.in_clearance
        else:
            is_green = green(t)
        s_c, s_o, u_c, u_o, c_c, c_q = sim.step(t, is_green)
        lc, lo = np.zeros(len(loops), dtype=np.int64), np.zeros(len(loops))
        cc, cq = np.zeros(len(cams), dtype=np.int64), np.zeros(len(cams), dtype=np.int64)
        for det, count, occ in ((STOP, s_c, s_o), (UP, u_c, u_o)):
            if det in loops:
                lc[loops.index(det)], lo[loops.index(det)] = count, occ
        if CAM in cams:
            cc[cams.index(CAM)], cq[cams.index(CAM)] = c_c, c_q
        if noise is not None:
            cc, cq = noise.cameras(cc, cq)
        r = Readings(float(t), lc, lo, cc, cq, signals)
        for f in faults:
            f(t, r, est)
        est.update(r)
        if check is not None:
            check(t)


def loop_fault(
    det: str, count: int, occupancy: float, since: int, until: float = math.inf
) -> Fault:
    def apply(t: int, r: Readings, est: TrafficEstimator) -> None:
        if since <= t < until:
            i = [d.id for d in est.layout.loops].index(det)
            r.loop_count[i], r.loop_occupancy[i] = count, occupancy

    return apply


def camera_fault(count: int, queue: int, since: int, until: float = math.inf) -> Fault:
    def apply(t: int, r: Readings, est: TrafficEstimator) -> None:
        if since <= t < until:
            r.camera_count[0], r.camera_queue[0] = count, queue

    return apply


def assert_sane(est: TrafficEstimator) -> None:
    for name in ("queue", "approaching", "arrival_rate", "discharge_rate", "confidence"):
        a = getattr(est, name)
        assert a.shape == (len(est.lanes),)
        assert np.isfinite(a).all() and (a >= 0).all(), name
    assert (est.confidence <= 1).all()
    for gaps in (est.stop_gap_s, est.upstream_gap_s):
        assert not np.isnan(gaps).any() and (gaps >= 0).all()


def test_lanes_follow_the_layout() -> None:
    est = TrafficEstimator(lane_layout(crossing()))
    assert est.lanes == ("in0", "in1", "in2", "in3")
    assert est.lane_index == {"in0": 0, "in1": 1, "in2": 2, "in3": 3}
    assert not est.blind("x") and est.faults() == [] and est.active_faults() == {}
    assert est.blind("no such intersection")
    with pytest.raises(ValueError, match="positive"):
        EstimatorSettings(dead_s=0)


def test_steady_arrivals_give_the_rate_and_no_queue() -> None:
    est = TrafficEstimator(lane_layout(crossing()))
    run(est, LaneSim(headway=4), 0, 600, green=lambda t: True)
    assert est.arrival_rate[0] == pytest.approx(0.25, rel=0.1)
    assert est.discharge_rate[0] == pytest.approx(0.25, rel=0.1)
    assert est.queue[0] < 0.5
    assert 0 <= est.approaching[0] <= 2
    assert est.stop_gap_s[0] < 4 and est.upstream_gap_s[0] < 4
    # quiet lanes: nothing flows, nothing is flagged, every sensor still trusted
    assert (est.arrival_rate[1:] == 0).all() and (est.queue[1:] == 0).all()
    assert np.isinf(est.stop_gap_s[1:]).all()
    assert (est.confidence == 1).all()
    assert est.faults() == [] and not est.blind("x")
    assert_sane(est)


def test_queue_grows_past_the_camera_zone() -> None:
    sim = LaneSim(headway=5)
    est = TrafficEstimator(lane_layout(crossing()))
    errors: list[float] = []

    def check(t: int) -> None:
        if t >= 310 and t % 10 == 0:
            errors.append(abs(est.queue[0] - sim.standing) / max(2.0, 0.1 * sim.standing))

    run(est, sim, 0, 700, green=lambda t: t < 300, check=check)
    assert sim.queue > 70  # far beyond the 13 vehicles a 100 m camera zone holds
    assert max(errors) <= 1.0  # within 2 vehicles or 10 %
    assert est.arrival_rate[0] == pytest.approx(0.2, rel=0.1)  # held while the queue covers it
    assert est.faults() == []
    assert_sane(est)


def test_queue_from_loops_when_the_camera_is_out() -> None:
    sim = LaneSim(headway=5)
    est = TrafficEstimator(lane_layout(crossing()))
    errors: list[float] = []

    def check(t: int) -> None:
        if t >= 320 and t % 10 == 0:
            errors.append(abs(est.queue[0] - sim.standing) / max(2.0, 0.15 * sim.standing))

    run(est, sim, 0, 700, (camera_fault(0, 0, since=50),), green=lambda t: t < 300, check=check)
    assert est.active_faults() == {CAM: FaultKind.CAMERA_BLACKOUT}
    assert max(errors) <= 1.0  # within 2 vehicles or 15 %
    assert est.approaching[0] == 0  # the queue fills the zone
    assert_sane(est)


def test_noisy_cameras_and_heavy_traffic_raise_no_fault() -> None:
    """Camera misses and double counts; light to saturated traffic, and an oversaturated lane
    whose queue outgrows the zone every cycle: all plausible, nothing flagged."""
    layout = lane_layout(crossing())
    noise = SensorModel(layout, SensorSettings(camera_miss_rate=0.1, camera_double_rate=0.05))
    for headway in (3, 4, 5, 9):
        sim = LaneSim(headway=headway)
        est = TrafficEstimator(layout)
        errors: list[float] = []

        def check(
            t: int, sim: LaneSim = sim, est: TrafficEstimator = est, errors: list[float] = errors
        ) -> None:
            errors.append(abs(est.queue[0] - sim.standing))
            assert_sane(est)

        run(est, sim, 0, 1800, noise=noise, check=check)
        assert est.faults() == [], headway
        if headway > 3:  # at 0.33 veh/s the residual queue is beyond every sensor (see module)
            assert float(np.mean(errors)) < 1.0, headway


@pytest.mark.parametrize(
    ("fault", "detector", "kind", "detected", "start"),
    [
        (loop_fault(STOP, 0, 0.0, 100, 700), STOP, FaultKind.DEAD, (390, 401), (90, 100)),
        (loop_fault(UP, 0, 0.0, 100, 700), UP, FaultKind.DEAD, (390, 401), (90, 100)),
        (loop_fault(STOP, 0, 1.0, 100, 700), STOP, FaultKind.STUCK_ON, (255, 281), (75, 100)),
        (loop_fault(UP, 0, 1.0, 100, 700), UP, FaultKind.STUCK_ON, (279, 281), (100, 100)),
        (loop_fault(STOP, 3, 0.5, 100, 700), STOP, FaultKind.CHATTERING, (100, 110), (95, 105)),
        (camera_fault(0, 0, 100, 700), CAM, FaultKind.CAMERA_BLACKOUT, (279, 281), (100, 100)),
        (camera_fault(5, 3, 100, 700), CAM, FaultKind.CAMERA_FROZEN, (219, 222), (99, 100)),
    ],
    ids=["stop-dead", "up-dead", "stop-stuck", "up-stuck", "chatter", "blackout", "frozen"],
)
def test_fault_found_in_its_window_reported_and_ended(
    fault: Fault,
    detector: str,
    kind: FaultKind,
    detected: tuple[float, float],
    start: tuple[float, float],
) -> None:
    sim = LaneSim(headway=5)
    est = TrafficEstimator(lane_layout(crossing()))
    seen: dict[str, float] = {}

    def check(t: int) -> None:
        assert_sane(est)
        if detector in est.active_faults() and "t" not in seen:
            seen["t"] = t
            seen["confidence"] = float(est.confidence[0])
        if t == seen.get("t", math.inf) + 120:  # estimates carry on from the other sensors
            assert est.arrival_rate[0] == pytest.approx(0.2, rel=0.35)
            assert est.discharge_rate[0] == pytest.approx(0.2, rel=0.5)
            assert not est.blind("x")

    run(est, sim, 0, 900, (fault,), check=check)
    assert detected[0] <= seen["t"] <= detected[1]
    assert HISTORY_ONLY < seen["confidence"] < 1
    [event] = est.faults()
    assert (event.detector, event.kind) == (detector, kind)
    assert start[0] <= event.start_s <= start[1]
    assert event.detected_s == seen["t"]
    assert event.end_s is not None and 700 <= event.end_s <= 760
    assert est.active_faults() == {}
    assert (est.confidence == 1).all()


@pytest.mark.parametrize(
    ("fault", "kind", "detected"),
    [
        (loop_fault(STOP, 0, 0.0, 100), FaultKind.DEAD, (395, 401)),
        (loop_fault(STOP, 0, 1.0, 100), FaultKind.STUCK_ON, (255, 281)),
    ],
    ids=["dead", "stuck"],
)
def test_stop_loop_checked_by_the_camera_alone(
    fault: Fault, kind: FaultKind, detected: tuple[float, float]
) -> None:
    est = TrafficEstimator(lane_layout(crossing(), upstream=False))
    run(est, LaneSim(headway=5), 0, 500, (fault,))
    [event] = est.faults()
    assert (event.detector, event.kind, event.end_s) == (STOP, kind, None)
    assert event.detected_s is not None and detected[0] <= event.detected_s <= detected[1]
    assert est.confidence[0] == pytest.approx(0.6)  # the camera is left
    assert_sane(est)


def test_blind_only_when_every_sensor_of_an_approach_is_gone() -> None:
    sim = LaneSim(headway=5)
    est = TrafficEstimator(lane_layout(crossing()))
    faults = (
        camera_fault(0, 0, 100),  # found with the loops' counts
        loop_fault(UP, 0, 0.0, 300),  # upstream dead: found with the stop loop's counts
        loop_fault(STOP, 0, 1.0, 700),  # stop loop stuck on: found by its green time alone
    )
    trace: list[tuple[float, bool, int]] = []

    def check(t: int) -> None:
        trace.append((float(est.confidence[0]), est.blind("x"), len(est.active_faults())))

    run(est, sim, 0, 1300, faults, check=check)
    kinds = {e.detector: e.kind for e in est.faults()}
    assert kinds == {CAM: FaultKind.CAMERA_BLACKOUT, UP: FaultKind.DEAD, STOP: FaultKind.STUCK_ON}
    assert est.blind("x")
    assert est.confidence[0] == pytest.approx(HISTORY_ONLY)
    assert (est.confidence[1:] == 1).all()
    # the profile learned 0.2 veh/s before the faults, and not the dead loop's silence
    assert est.arrival_rate[0] == pytest.approx(0.2, rel=0.1)
    assert_sane(est)
    # confidence only fell, and blind came exactly with the last sensor's fault
    assert all(b[0] <= a[0] for a, b in itertools.pairwise(trace))
    assert all(blind == (n == 3) for _, blind, n in trace)
    assert trace[-1][1:] == (True, 3)


def test_a_lone_quiet_sensor_is_not_flagged() -> None:
    x = crossing()
    layouts = (
        lane_layout(x, upstream=False, camera=False),
        lane_layout(x, stop=False, camera=False),
        lane_layout(x, stop=False, upstream=False),
        lane_layout(x, camera=False),  # two loops, both quiet: still no evidence
    )
    for layout in layouts:
        est = TrafficEstimator(layout)
        run(est, LaneSim(headway=5), 0, 200)
        run(est, LaneSim(headway=10**9), 200, 1500)  # the lane empties for long
        assert est.faults() == [] and not est.blind("x")
        assert_sane(est)


def test_faulty_sensors_on_a_quiet_lane_do_not_incriminate_the_others() -> None:
    """A chattering loop's counts, or a frozen camera's vehicles, prove nothing about the
    lane's other sensors once the liar is known (or while its picture stands still)."""
    for fault, liar in (
        (loop_fault(STOP, 3, 0.5, 100, 200), STOP),
        (loop_fault(UP, 3, 0.5, 100, 200), UP),
        (camera_fault(5, 3, 100), None),  # no loop counts: a frozen camera cannot be told
    ):
        est = TrafficEstimator(lane_layout(crossing()))
        run(est, LaneSim(headway=10**9), 0, 1200, (fault,))
        assert [e.detector for e in est.faults()] == ([liar] if liar else [])
        assert est.active_faults() == {}
        assert_sane(est)


def test_upstream_loop_at_a_pocket_start_is_not_called_dead() -> None:
    """On a 50 m turn pocket the upstream loop sits at the lane's start: vehicles that change
    into the pocket after it are counted by the stop loop only."""
    base = lane_layout(crossing())
    loops = tuple(
        dataclasses.replace(d, distance_m=49.5) if d.kind == DetectorKind.UPSTREAM_LOOP else d
        for d in base.loops
    )
    pocket = dataclasses.replace(
        base, loops=loops, lane_length_m={lane: 50.0 for lane in crossing().in_lanes}
    )
    for layout, found in ((pocket, []), (base, [UP])):
        est = TrafficEstimator(layout)
        run(est, LaneSim(headway=5), 0, 700, (loop_fault(UP, 0, 0.0, 0),))
        assert [e.detector for e in est.faults()] == found


def test_jammed_lane_with_lane_changers_is_not_dead() -> None:
    """A jammed lane: its front vehicle stands just short of the stop loop (as in SUMO), the
    camera sees the queue standing, a few vehicles change in over the upstream loop and away
    again. Plenty pass the upstream loop, none the stop loop, yet nothing is broken."""
    est = TrafficEstimator(lane_layout(crossing()))
    for t in range(1200):
        lc, lo = np.zeros(8, dtype=np.int64), np.zeros(8)
        cc, cq = np.zeros(4, dtype=np.int64), np.zeros(4, dtype=np.int64)
        cc[0], cq[0] = 13, 13
        if t % 25 == 0:  # one creeps over the upstream loop, then changes lanes
            lc[1], lo[1] = 1, 0.5
            cq[0] = 12
        est.update(Readings(float(t), lc, lo, cc, cq, {"x": plan_view(t)}))
    assert est.faults() == []
    assert est.queue[0] >= 13
    assert_sane(est)


def test_a_short_camera_zone_is_not_judged() -> None:
    """On a 10 m lane a passing vehicle may fall between two frames of the camera."""
    x = crossing()
    base = lane_layout(x)
    short = dataclasses.replace(
        base,
        loops=tuple(dataclasses.replace(d, distance_m=min(d.distance_m, 9.5)) for d in base.loops),
        cameras=tuple(dataclasses.replace(d, distance_m=10.0) for d in base.cameras),
        lane_length_m={lane: 10.0 for lane in x.in_lanes},
    )
    est = TrafficEstimator(short)
    run(est, LaneSim(headway=5), 0, 600, (camera_fault(0, 0, 0),))
    assert est.faults() == []


def test_camera_only_lane_cannot_be_judged_and_is_not_blind() -> None:
    est = TrafficEstimator(lane_layout(crossing(), stop=False, upstream=False))
    run(est, LaneSim(headway=5), 0, 800, (camera_fault(0, 0, 100),))
    assert est.faults() == [] and not est.blind("x")
    assert est.arrival_rate[0] == 0  # nothing ever measured a flow on that lane
    assert_sane(est)


def test_history_follows_the_time_of_day() -> None:
    """Two days in 60 s steps: 0.1 veh/s in the morning, 0.3 in the afternoon; on day two both
    loops start chattering and the profile takes over."""
    est = TrafficEstimator(lane_layout(crossing(), camera=False))
    rates: dict[int, float] = {}
    day = 86_400
    none = np.zeros(0, dtype=np.int64)
    for step in range(2 * 1440):
        t = step * 60
        rate = 0.1 if (t % day) < day / 2 else 0.3
        lc, lo = np.zeros(8, dtype=np.int64), np.zeros(8)
        if t < day + 3600:
            lc[0] = lc[1] = round(rate * 60)
            lo[0] = lo[1] = 0.1
        else:
            lc[0] = lc[1] = 200  # chattering
        est.update(Readings(float(t), lc, lo, none, none, {}))
        if t in (day + 6 * 3600, day + 18 * 3600):
            rates[t] = float(est.arrival_rate[0])
            assert est.blind("x") and est.confidence[0] == pytest.approx(HISTORY_ONLY)
    assert rates[day + 6 * 3600] == pytest.approx(0.1, rel=0.05)
    assert rates[day + 18 * 3600] == pytest.approx(0.3, rel=0.05)
    assert {e.kind for e in est.faults()} == {FaultKind.CHATTERING}


def test_history_before_anything_is_learned_is_zero() -> None:
    est = TrafficEstimator(lane_layout(crossing(), camera=False))
    lc, none = np.full(8, 5, dtype=np.int64), np.zeros(0, dtype=np.int64)
    for t in range(30):
        est.update(Readings(float(t), lc, np.full(8, 0.5), none, none, {}))
    assert est.blind("x") and (est.arrival_rate == 0).all()
    assert len(est.active_faults()) == 8
    assert_sane(est)


def test_readings_must_move_forward_and_fit_the_layout() -> None:
    est = TrafficEstimator(lane_layout(crossing()))
    cams = np.zeros(4, dtype=np.int64)
    r = Readings(5.0, np.zeros(8, dtype=np.int64), np.zeros(8), cams, cams, {})
    est.update(r)
    with pytest.raises(ValueError, match="forward"):
        est.update(r)
    with pytest.raises(ValueError, match="layout"):
        est.update(Readings(6.0, np.zeros(3, dtype=np.int64), np.zeros(3), cams, cams, {}))


def test_empty_layout() -> None:
    est = TrafficEstimator(Layout((), (), ()))
    none = np.zeros(0, dtype=np.int64)
    est.update(Readings(0.0, none, np.zeros(0), none, none, {}))
    assert est.lanes == () and est.queue.shape == (0,) and est.blind("x")


def test_fault_event_compares_without_detection_time() -> None:
    a = FaultEvent("d", FaultKind.DEAD, 1.0, None, detected_s=3.0)
    assert a == FaultEvent("d", FaultKind.DEAD, 1.0, None)


def big_layout(n_crossings: int) -> Layout:
    xs: list[Intersection] = []
    loops: list[DetectorSpec] = []
    cams: list[DetectorSpec] = []
    phases = phases_from_plan(PLAN)
    for k in range(n_crossings):
        x = Intersection(
            id=f"x{k}",
            links=tuple(SignalLink(i, f"x{k}_in{i}", f"x{k}_out{i}") for i in range(4)),
            conflicts=(frozenset({2, 3}), frozenset({2, 3}), frozenset({0, 1}), frozenset({0, 1})),
            yields_to=(frozenset(),) * 4,
            plan=PLAN,
            plan_offset_s=0.0,
            phases=phases,
            yellow_s=3,
            all_red_s=2,
            transitions=transitions_from_plan(PLAN, phases),
        )
        xs.append(x)
        sub = lane_layout(x)
        loops += sub.loops
        cams += sub.cameras
    return Layout(tuple(xs), tuple(loops), tuple(cams))


def time_updates(n_crossings: int, steps: int) -> float:
    """Mean CPU seconds per update on random readings."""
    layout = big_layout(n_crossings)
    xs = layout.intersections
    est = TrafficEstimator(layout)
    rng = np.random.default_rng(1)
    nl, nc = len(layout.loops), len(layout.cameras)
    counts = rng.binomial(1, 0.2, size=(steps, nl))
    occ = rng.uniform(0, 1, size=(steps, nl)) * (rng.uniform(size=(steps, nl)) < 0.3)
    cq = rng.integers(0, 15, size=(steps, nc))
    cc = cq + rng.integers(0, 4, size=(steps, nc))
    readings = [
        Readings(float(t), counts[t], occ[t], cc[t], cq[t], {x.id: plan_view(t) for x in xs})
        for t in range(steps)
    ]
    begin = time.process_time()
    for r in readings:
        est.update(r)
    elapsed = (time.process_time() - begin) / steps
    assert_sane(est)
    return elapsed


def test_update_is_fast_for_500_detectors() -> None:
    # 42 crossings x 4 lanes x (2 loops + camera) = 504 detectors
    assert time_updates(42, 600) < 3e-3  # about 0.3 ms; generous for a loaded machine
