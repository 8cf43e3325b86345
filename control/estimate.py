"""The detector layer: per-lane traffic estimates from loops and cameras, with sensor faults.

Pure numpy, no SUMO. ``TrafficEstimator.update`` is fed every sampling instant (1 s) and keeps,
for every approach lane, the standing queue, the moving vehicles, arrival and discharge rates,
detection gaps, and how much of that rests on working sensors (``confidence``).

Faults are found by cross-checking the sensors of one lane, and the lane's own signal:

* a loop silent for ``dead_s`` while its neighbour loop counted more vehicles than fit between
  the two, and (for a stop loop) the camera saw vehicles moving on green for a minute in all,
  is DEAD. Each of these witnesses that works must testify (in a jam, vehicles that change
  lanes pass one loop and not the other, but the camera sees nothing move); a neighbour loop
  alone must count twice what fits;
* a loop reporting a standing vehicle (occupancy 1, no count) for ``stuck_on_s`` while the
  neighbour loop counts more than fit between them, or the camera sees nobody standing over
  it a fifth of the time, is STUCK_ON; so is a loop that is its lane's last working sensor
  and has reported a standing vehicle through ``stuck_on_s`` of priority green in all;
* a loop counting faster than any lane flows for 10 s is CHATTERING;
* a camera seeing nothing, or the very same non-zero picture, for long while the lane's loops
  count vehicles through its zone is in CAMERA_BLACKOUT or CAMERA_FROZEN.

A detector that behaves plausibly again ends its fault. Only working sensors count as evidence,
so a lone sensor is never flagged for being quiet: an empty lane is quiet too.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from citybrain.control.port import DetectorKind, FloatArray, IntArray, Layout, Readings

BoolArray = npt.NDArray[np.bool_]

FULL_OCCUPANCY = 0.99
HOLD_S = 3.0
"""A loop fully occupied this long has a vehicle standing on it."""
MARGIN_VEH = 2.0
"""Slack on the number of vehicles that fit between the two loops of a lane."""
DEAD_BY_LOOP_FACTOR = 2.0
"""Without a camera to confirm, a silent loop is dead only when its neighbour counted this many
times what fits between them (in a jam, vehicles change lanes between the two loops)."""
POCKET_M = 15.0
"""An upstream loop this close to its lane's start (a turn pocket) misses the vehicles that
change into the lane after it: the stop loop's counts do not prove it dead."""
CAMERA_EVIDENCE_VEH = 5.0
"""Loop counts in a camera's zone that prove the camera should have seen something."""
DEAD_CAMERA_EVIDENCE_S = 60.0
"""Seconds a camera must see vehicles moving on green past a silent stop loop."""
MIN_CAMERA_ZONE_M = 25.0
"""A shorter camera zone may miss a vehicle between two frames: it neither judges a loop nor
is judged by one."""
STUCK_CAMERA_SHARE = 0.2
"""Share of a stuck-looking run in which the camera sees nobody standing over the loop."""
CAMERA_STILL_S = 10.0
"""A camera whose picture has not changed for this long does not testify against a loop."""
CHATTER_WINDOW = 10
"""Steps (1 s each) over which a loop's count rate is judged for chattering."""
ZONE_FULL = 0.9
"""A camera zone holding this share of the vehicles it can hold (at jam spacing) is full."""
TREND_SMOOTHING = 5.0
"""Queues grow with an arrival rate smoothed this many times longer than flows (over several
signal cycles: a flow smoothed over one cycle still swings with the cycle's platoons)."""
HISTORY_CONFIDENCE = 0.2
CAMERA_WEIGHT, UPSTREAM_WEIGHT, STOP_WEIGHT = 0.5, 0.3, 0.2
DAY_S = 86_400.0
HISTORY_BLOCK = 60
"""Samples are committed to the historical profile in blocks of this many steps."""

_OK, _STUCK, _DEAD, _CHATTER, _BLACKOUT, _FROZEN = range(6)
# rows of the per-loop run matrix: how long the loop has looked silent or stuck, and the
# evidence gathered meanwhile (neighbour loop counts, camera seconds, green seconds)
_SILENT, _SILENT_BY_LOOP, _SILENT_BY_CAM, _STUCK_S, _STUCK_BY_LOOP, _STUCK_BY_CAM, _STUCK_GREEN = (
    range(7)
)
# rows of the per-camera run matrix
_BLANK, _BLANK_BY_LOOPS, _SAME, _SAME_BY_LOOPS = range(4)
# rows of the per-loop table that lanes gather from
_COUNT, _WORKS, _HELD, _RATE, _TREND, _LIVE, _GAP = range(7)


@dataclass(frozen=True, slots=True)
class EstimatorSettings:
    smoothing_s: float = 60.0
    """EWMA time constant for flows."""
    jam_spacing_m: float = 7.5
    """Space one standing vehicle takes."""
    saturation_headway_s: float = 2.0
    """Discharge default: a queue with no working stop loop drains at one vehicle per this."""
    stuck_on_s: float = 180.0
    """Occupancy 1.0 this long while the lane evidently moves: stuck."""
    dead_s: float = 300.0
    """Loop silent this long while its lane's other sensors see traffic: dead."""
    camera_frozen_s: float = 120.0
    """Identical non-zero camera values this long while loops count: frozen."""
    camera_blackout_s: float = 180.0
    """Camera sees nothing this long while loops count: blackout."""
    chatter_per_s: float = 1.5
    """Loop counts above this rate sustained for 10 s: chattering."""
    free_speed_mps: float = 13.9
    """Speed of moving vehicles, for the loop-based estimate of ``approaching``."""
    profile_bin_s: float = 900.0
    """Width of a time-of-day bin of the historical arrival profile."""
    profile_memory_days: float = 7.0
    """How many days of a bin the historical profile mostly remembers."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"estimator.{f.name} must be positive, not {value}")


class FaultKind(StrEnum):
    STUCK_ON = "stuck_on"
    DEAD = "dead"
    CHATTERING = "chattering"
    CAMERA_BLACKOUT = "camera_blackout"
    CAMERA_FROZEN = "camera_frozen"


_KINDS = {
    _STUCK: FaultKind.STUCK_ON,
    _DEAD: FaultKind.DEAD,
    _CHATTER: FaultKind.CHATTERING,
    _BLACKOUT: FaultKind.CAMERA_BLACKOUT,
    _FROZEN: FaultKind.CAMERA_FROZEN,
}


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """A detector fault: from when the detector began to misbehave, to when it stopped."""

    detector: str
    kind: FaultKind
    start_s: float
    end_s: float | None
    """None while the fault is active."""
    detected_s: float | None = field(default=None, compare=False)
    """When the estimator became sure of it (``start_s`` is backdated to the first odd step)."""


def _take(values: FloatArray, index: IntArray, fill: float) -> FloatArray:
    """``values[index]``, with ``fill`` where the index is -1 (no such detector)."""
    ext = np.empty(values.size + 1, dtype=np.float64)
    ext[:-1] = values
    ext[-1] = fill
    return ext[index]


class TrafficEstimator:
    """Per-lane estimates from raw readings; see the module docstring for the fault checks.

    Lane arrays (valid after ``update``; replaced, not changed in place, at every update),
    indexed like ``lanes``:

    * ``queue``: vehicles standing on the approach: the camera's queue, plus the vehicles beyond
      its zone while the zone is full of standing vehicles (they arrive at the arrival rate,
      smoothed over several cycles, and enter the zone as vehicles leave at the stop line).
      From the loops when the camera is faulty: a loop that stays occupied means the queue
      reaches it; a queue over an occupied upstream loop grows with the arrival rate; it
      drains by the stop loop's counts (without a working stop loop, at saturation flow).
    * ``approaching``: moving vehicles in the camera zone (and those beyond it once the zone
      moves), or arrival rate x travel time over the zone's free part when the camera is faulty.
    * ``arrival_rate`` (veh/s): upstream loop, else stop loop, else the historical profile.
    * ``discharge_rate`` (veh/s): stop loop, else the arrival rate capped at saturation flow.
    * ``stop_gap_s``/``upstream_gap_s``: since the loop last detected a vehicle (inf if never,
      missing, or faulty).
    * ``confidence``: 1 with camera and both loops working, 0.2 with only history.
    """

    def __init__(self, layout: Layout, settings: EstimatorSettings | None = None) -> None:
        self.settings = s = settings or EstimatorSettings()
        self.layout = layout
        loops, cams, xs = layout.loops, layout.cameras, layout.intersections
        self.lanes: tuple[str, ...] = tuple(dict.fromkeys(d.lane for d in (*loops, *cams)))
        self.lane_index: dict[str, int] = {lane: k for k, lane in enumerate(self.lanes)}
        n, nl, nc = len(self.lanes), len(loops), len(cams)
        self._loop_ids = [d.id for d in loops]
        self._cam_ids = [d.id for d in cams]
        spacing = s.jam_spacing_m

        # which detector serves each lane (-1: none); extra detectors of a kind are only checked
        stop = np.full(n, -1, dtype=np.int64)
        up = np.full(n, -1, dtype=np.int64)
        cam = np.full(n, -1, dtype=np.int64)
        for i, d in enumerate(loops):
            slot = {DetectorKind.STOP_LOOP: stop, DetectorKind.UPSTREAM_LOOP: up}.get(d.kind)
            if slot is not None and slot[self.lane_index[d.lane]] < 0:
                slot[self.lane_index[d.lane]] = i
        for i, d in enumerate(cams):
            if cam[self.lane_index[d.lane]] < 0:
                cam[self.lane_index[d.lane]] = i
        self._stop, self._up, self._cam = stop, up, cam
        ldist = np.array([d.distance_m for d in loops], dtype=np.float64)
        cdist = np.array([d.distance_m for d in cams], dtype=np.float64)
        loop_zone = np.maximum(_take(ldist, stop, 0.0), _take(ldist, up, 0.0))
        self._zone = np.maximum(np.where(cam >= 0, _take(cdist, cam, 0.0), loop_zone), spacing)
        """Length of the lane's camera zone (or of its loop-covered stretch)."""
        self._zone_full_q = np.maximum(1.0, ZONE_FULL * self._zone / spacing)
        self._n_stop = np.floor(_take(ldist, stop, 0.0) / spacing) + 1.0
        self._n_up = np.floor(_take(ldist, up, 0.0) / spacing) + 1.0
        """Vehicles standing when the queue reaches the loop."""
        self._single = (stop >= 0).astype(np.int64) + (up >= 0) + (cam >= 0) == 1
        weight = (
            CAMERA_WEIGHT * (cam >= 0) + UPSTREAM_WEIGHT * (up >= 0) + STOP_WEIGHT * (stop >= 0)
        )
        self._sound_confidence = HISTORY_CONFIDENCE + (1.0 - HISTORY_CONFIDENCE) * weight
        """Confidence with every existing sensor working."""
        self._sound_confidence.flags.writeable = False

        # per loop: its lane, its neighbour loop, the camera over it
        lane_of = np.array([self.lane_index[d.lane] for d in loops], dtype=np.int64)
        self._l_lane = lane_of
        self._l_is_up = np.array([d.kind == DetectorKind.UPSTREAM_LOOP for d in loops], bool)
        self._l_other = np.where(self._l_is_up, stop[lane_of], up[lane_of])
        between = np.abs(ldist - _take(ldist, self._l_other, 0.0)) / spacing + 1.0
        """Vehicles that fit between the loop and its neighbour."""
        paired = self._l_other >= 0
        self._l_storage = np.where(paired, between + MARGIN_VEH, np.inf)
        length = np.array([layout.lane_length_m.get(d.lane, np.inf) for d in loops], np.float64)
        pocket = self._l_is_up & (ldist >= length - POCKET_M)
        self._l_dead_count = DEAD_BY_LOOP_FACTOR * between + MARGIN_VEH
        self._l_dead_by_loop = paired & ~pocket
        self._l_cam = cam[lane_of]
        zone = self._zone[lane_of]
        seen = (self._l_cam >= 0) & (ldist <= zone + 0.5) & (zone >= MIN_CAMERA_ZONE_M)
        reach = np.minimum(ldist, zone) / spacing
        self._l_dead_by_cam = seen & ~self._l_is_up
        """Stop loops a camera sees: vehicles it sees moving on green must pass them."""
        self._l_stuck_q = np.where(seen, 0.5 * reach, -np.inf)
        """A camera queue shorter than this leaves nobody standing over the loop."""
        self._l_alone = (self._l_other < 0) & (self._l_cam < 0)

        # per camera: the loops inside its zone
        cam_lane = np.array([self.lane_index[d.lane] for d in cams], dtype=np.int64)
        czone = self._zone[cam_lane]
        judged = czone >= MIN_CAMERA_ZONE_M
        cs, cu = stop[cam_lane], up[cam_lane]
        self._c_stop = np.where(judged & (_take(ldist, cs, np.inf) <= czone + 0.5), cs, -1)
        self._c_up = np.where(judged & (_take(ldist, cu, np.inf) <= czone + 0.5), cu, -1)

        # signals: each lane's intersection, and per phase whether it lets the lane go
        self._x_ids = [x.id for x in xs]
        self._x_phases = [len(x.phases) for x in xs]
        width = max(self._x_phases, default=0) + 1
        self._no_phase = width - 1
        self._lane_x = np.full(n, len(xs), dtype=np.int64)
        for k, x in enumerate(xs):
            for lane in x.in_lanes:
                j = self.lane_index.get(lane)
                if j is not None and self._lane_x[j] == len(xs):
                    self._lane_x[j] = k
        self._go = np.zeros((n, width), dtype=np.bool_)
        self._go_free = np.zeros((n, width), dtype=np.bool_)
        for k, x in enumerate(xs):
            for p, phase in enumerate(x.phases):
                for link, ch in zip(x.links, phase.state, strict=False):
                    for lane, _ in link.movements:
                        j = self.lane_index.get(lane)
                        if j is not None and self._lane_x[j] == k:
                            self._go[j, p] |= ch in "Gg"
                            self._go_free[j, p] |= ch == "G"
        self._rows = np.arange(n)

        # approaches of each intersection, for ``blind``
        members: dict[str, set[int]] = {}
        unsensed: dict[str, bool] = {}
        for x in xs:
            lanes = [lane for lane in x.in_lanes if lane]
            members.setdefault(x.id, set()).update(
                self.lane_index[lane] for lane in lanes if lane in self.lane_index
            )
            unsensed[x.id] = any(lane not in self.lane_index for lane in lanes)
        for d in (*loops, *cams):
            members.setdefault(d.intersection, set()).add(self.lane_index[d.lane])
        self._x_index = {xid: k for k, xid in enumerate(members)}
        self._x_unsensed = np.array(
            [unsensed.get(xid, False) or not lanes for xid, lanes in members.items()], bool
        )
        self._x_group = np.array(
            [k for k, lanes in enumerate(members.values()) for _ in lanes], dtype=np.int64
        )
        self._x_lanes = np.array([j for lanes in members.values() for j in lanes], dtype=np.int64)
        self._blind = self._x_unsensed.copy()

        # fault state
        self._loop_code = np.zeros(nl, dtype=np.int64)
        self._loop_runs = np.zeros((7, nl))
        self._loop_step = np.zeros((7, nl))
        self._loop_active = np.zeros((7, nl), dtype=np.bool_)
        self._silent_start, self._stuck_start = np.zeros(nl), np.zeros(nl)
        self._ring = np.zeros((CHATTER_WINDOW, nl))
        self._ring_dt = [0.0] * CHATTER_WINDOW
        self._ring_sum = np.zeros(nl)
        self._ring_pos = 0
        self._ring_n = 0
        self._bad_start = np.full(nl, np.inf)
        self._bad_end = np.full(nl, np.inf)
        """The loop's latest fault interval (end inf while active): history skips it."""
        self._counted = np.zeros(nl + 1)
        self._cam_pad = np.full((2, nc + 1), np.nan)
        """Camera counts and queues, padded, nan where they cannot testify."""
        self._works_pad = np.zeros(nl + 1, dtype=np.bool_)
        self._cam_works_pad = np.zeros(nc + 1, dtype=np.bool_)
        self._cam_code = np.zeros(nc, dtype=np.int64)
        self._cam_runs = np.zeros((4, nc))
        self._cam_step = np.zeros((4, nc))
        self._cam_active = np.zeros((4, nc), dtype=np.bool_)
        self._blank_start, self._same_start = np.zeros(nc), np.zeros(nc)
        self._prev_cc, self._prev_cq = np.full(nc, -1.0), np.full(nc, -1.0)
        self._events: list[FaultEvent] = []
        self._open: dict[str, int] = {}

        # estimation state
        self._time: float | None = None
        self._full_s = np.zeros(nl)
        self._last_seen = np.full(nl, -np.inf)
        self._rate_m, self._rate_w = np.zeros((2, nl)), np.zeros((2, nl))
        self._rate = np.zeros((2, nl))
        """Per loop: flow smoothed over ``smoothing_s``, and over the longer trend horizon."""
        self._smoothing = s.smoothing_s * np.array([[1.0], [TREND_SMOOTHING]])
        self._loop_table = np.zeros((7, nl + 1))
        self._cam_table = np.zeros((3, nc + 1))
        self._q_loops = np.zeros(n)
        self._beyond = np.zeros(n)

        # historical profile: samples wait in a ring until a fault found later can still void
        # them, then go to time-of-day bins (weighted means, older days fading)
        bins = max(1, math.ceil(DAY_S / s.profile_bin_s))
        self._prof_sum, self._prof_time = np.zeros((n, bins)), np.zeros((n, bins))
        self._mean_sum, self._mean_time = np.zeros(n), np.zeros(n)
        blocks = math.ceil(2.0 * max(s.dead_s, s.stuck_on_s) / HISTORY_BLOCK) + 1
        delay = blocks * HISTORY_BLOCK
        self._pend_rate = np.zeros((delay, n))
        self._pend_src = np.full((delay, n), -1, dtype=np.int64)
        self._pend_ok = np.zeros((delay, n), dtype=np.bool_)
        self._pend_t = np.full(delay, np.nan)
        self._pend_dt = np.zeros(delay)
        self._pend_pos = 0
        self._hist_key = (-1, -1)
        self._hist_version = 0
        self._hist_value = np.zeros(n)

        self.queue: FloatArray = np.zeros(n)
        self.approaching: FloatArray = np.zeros(n)
        self.arrival_rate: FloatArray = np.zeros(n)
        self.discharge_rate: FloatArray = np.zeros(n)
        self.stop_gap_s: FloatArray = np.full(n, np.inf)
        self.upstream_gap_s: FloatArray = np.full(n, np.inf)
        self.confidence: FloatArray = np.full(n, HISTORY_CONFIDENCE)

    # -- public -----------------------------------------------------------------------------

    def update(self, readings: Readings) -> None:
        """Take one sampling instant; call once per step, in time order."""
        t = float(readings.time_s)
        dt = 1.0 if self._time is None else t - self._time
        if not dt > 0:
            raise ValueError(f"readings must move forward in time: {t} after {self._time}")
        c = readings.loop_count.astype(np.float64)
        o = np.asarray(readings.loop_occupancy, dtype=np.float64)
        cc = readings.camera_count.astype(np.float64)
        cq = readings.camera_queue.astype(np.float64)
        if c.shape != self._loop_code.shape or cc.shape != self._cam_code.shape:
            raise ValueError("readings do not match the layout's detectors")
        self._time = t
        green, free, known = self._signal_state(readings)
        counted = self._check_loops(t, dt, c, o, cc, cq, green, free)
        self._check_cameras(t, dt, counted, cc, cq)
        self._estimate(t, dt, c, o, cc, cq, green, known)

    def faults(self) -> list[FaultEvent]:
        """Every fault seen so far, in the order detected, with start and end."""
        return list(self._events)

    def active_faults(self) -> dict[str, FaultKind]:
        return {det: self._events[i].kind for det, i in self._open.items()}

    def blind(self, intersection_id: str) -> bool:
        """True when some approach of the intersection has no working sensor (only history)."""
        k = self._x_index.get(intersection_id)
        return True if k is None else bool(self._blind[k])

    # -- faults -----------------------------------------------------------------------------

    def _signal_state(self, readings: Readings) -> tuple[BoolArray, BoolArray, BoolArray]:
        """Per lane: green (``G``/``g``), priority green (``G``), whether its signal is known."""
        phase = [self._no_phase] * (len(self._x_ids) + 1)
        known = [False] * (len(self._x_ids) + 1)
        for k, (xid, count) in enumerate(zip(self._x_ids, self._x_phases, strict=True)):
            view = readings.signals.get(xid)
            if view is not None:
                known[k] = True
                if not view.in_clearance and 0 <= view.phase < count:
                    phase[k] = view.phase
        lane_phase = np.array(phase)[self._lane_x]
        return (
            self._go[self._rows, lane_phase],
            self._go_free[self._rows, lane_phase],
            np.array(known)[self._lane_x],
        )

    def _check_loops(
        self,
        t: float,
        dt: float,
        c: FloatArray,
        o: FloatArray,
        cc: FloatArray,
        cq: FloatArray,
        green: BoolArray,
        free: BoolArray,
    ) -> FloatArray:
        """Run the loop fault checks; return the counts of working loops (padded with a 0)."""
        s = self.settings
        code = self._loop_code
        ok = code == _OK
        counted, cams = self._counted, self._cam_pad
        counted[:-1] = c
        cams[0, :-1] = cc
        cams[1, :-1] = cq
        cams[:, :-1][:, self._cam_runs[_SAME] >= CAMERA_STILL_S] = np.nan  # frozen, perhaps
        alone = self._l_alone
        if self._open:
            counted[:-1] *= ok
            cam_ok = self._cam_code == _OK
            cams[:, :-1][:, ~cam_ok] = np.nan
            self._works_pad[:-1] = ok
            self._cam_works_pad[:-1] = cam_ok
            alone = ~(self._works_pad[self._l_other] | self._cam_works_pad[self._l_cam])
        q = cams[1, self._l_cam]
        moving = cams[0, self._l_cam] - q
        none = c <= 0
        silent = none & (o <= 0)
        stuck = none & (o >= FULL_OCCUPANCY)

        runs, step, active = self._loop_runs, self._loop_step, self._loop_active
        self._silent_start[silent & (runs[_SILENT] <= 0)] = t
        self._stuck_start[stuck & (runs[_STUCK_S] <= 0)] = t
        step[_SILENT] = step[_STUCK_S] = dt
        step[_SILENT_BY_LOOP] = step[_STUCK_BY_LOOP] = counted[self._l_other]
        step[_SILENT_BY_CAM] = (moving >= 1) & green[self._l_lane] & self._l_dead_by_cam
        step[_STUCK_BY_CAM] = q < self._l_stuck_q
        step[_STUCK_GREEN] = free[self._l_lane] & alone
        if dt != 1.0:
            step[[_SILENT_BY_CAM, _STUCK_BY_CAM, _STUCK_GREEN]] *= dt
        active[:_STUCK_S] = silent
        active[_STUCK_S:] = stuck
        runs += step
        runs *= active

        p = self._ring_pos
        self._ring_sum += c - self._ring[p]
        self._ring[p] = c
        self._ring_dt[p] = dt
        self._ring_pos = (p + 1) % CHATTER_WINDOW
        self._ring_n = min(self._ring_n + 1, CHATTER_WINDOW)
        window_s = sum(self._ring_dt)
        rate = self._ring_sum / window_s

        if self._open:
            ending = (
                ((code == _DEAD) & ~silent)
                | ((code == _STUCK) & ~stuck)
                | ((code == _CHATTER) & (rate <= 0.5 * s.chatter_per_s))
            )
            for i in np.flatnonzero(ending):
                self._close(self._loop_ids[i], t)
                code[i] = _OK
                self._bad_end[i] = t
                self._rate_m[:, i] = self._rate_w[:, i] = self._rate[:, i] = 0.0

        chatter = (rate > s.chatter_per_s) & (self._ring_n == CHATTER_WINDOW)
        candidate = ok & (chatter | (runs[_SILENT] >= s.dead_s) | (runs[_STUCK_S] >= s.stuck_on_s))
        if candidate.any():
            storage = self._l_storage
            stuck_on = (runs[_STUCK_S] >= s.stuck_on_s) & (
                (runs[_STUCK_BY_LOOP] > storage)
                | (runs[_STUCK_BY_CAM] >= STUCK_CAMERA_SHARE * runs[_STUCK_S])
                | (runs[_STUCK_GREEN] >= s.stuck_on_s)
            )
            # dead: every working witness must testify, and there must be one. The neighbour loop
            # is a witness once it counted during the silence (a silent one may be dead too)
            by_loop = self._l_dead_by_loop & (runs[_SILENT_BY_LOOP] > 0)
            by_cam = self._l_dead_by_cam
            if self._open:
                by_loop = by_loop & self._works_pad[self._l_other]
                by_cam = by_cam & self._cam_works_pad[self._l_cam]
            dead = (
                (runs[_SILENT] >= s.dead_s)
                & (by_loop | by_cam)
                & (
                    ~by_loop
                    | (runs[_SILENT_BY_LOOP] > np.where(by_cam, storage, self._l_dead_count))
                )
                & (~by_cam | (runs[_SILENT_BY_CAM] >= DEAD_CAMERA_EVIDENCE_S))
            )
            for i in np.flatnonzero(candidate & (chatter | stuck_on | dead)):
                if chatter[i]:
                    kind, start = _CHATTER, t - window_s + dt
                elif stuck_on[i]:
                    kind, start = _STUCK, float(self._stuck_start[i])
                else:
                    kind, start = _DEAD, float(self._silent_start[i])
                self._open_fault(self._loop_ids[i], _KINDS[kind], start, t)
                code[i] = kind
                self._bad_start[i], self._bad_end[i] = start, np.inf
                self._void_evidence_from(int(i))
        return counted

    def _check_cameras(
        self, t: float, dt: float, counted: FloatArray, cc: FloatArray, cq: FloatArray
    ) -> None:
        s = self.settings
        code = self._cam_code
        seen = counted[self._c_stop] + counted[self._c_up]
        blank = (cc <= 0) & (cq <= 0)
        same = (cc == self._prev_cc) & (cq == self._prev_cq) & (cc > 0)
        self._prev_cc, self._prev_cq = cc, cq

        runs, step, active = self._cam_runs, self._cam_step, self._cam_active
        self._blank_start[blank & (runs[_BLANK] <= 0)] = t
        self._same_start[same & (runs[_SAME] <= 0)] = t - dt  # the frame it repeats
        step[_BLANK] = step[_SAME] = dt
        step[_BLANK_BY_LOOPS] = step[_SAME_BY_LOOPS] = seen
        active[:_SAME] = blank
        active[_SAME:] = same
        runs += step
        runs *= active

        if self._open:
            ending = ((code == _BLACKOUT) & ~blank) | ((code == _FROZEN) & ~same)
            for i in np.flatnonzero(ending):
                self._close(self._cam_ids[i], t)
                code[i] = _OK
        blackout = (runs[_BLANK] >= s.camera_blackout_s) & (
            runs[_BLANK_BY_LOOPS] >= CAMERA_EVIDENCE_VEH
        )
        frozen = (runs[_SAME] >= s.camera_frozen_s) & (runs[_SAME_BY_LOOPS] >= CAMERA_EVIDENCE_VEH)
        found = blackout | frozen
        if not found.any():
            return
        for i in np.flatnonzero(found & (code == _OK)):
            if blackout[i]:
                self._open_fault(
                    self._cam_ids[i], FaultKind.CAMERA_BLACKOUT, self._blank_start[i], t
                )
                code[i] = _BLACKOUT
            else:
                self._open_fault(self._cam_ids[i], FaultKind.CAMERA_FROZEN, self._same_start[i], t)
                code[i] = _FROZEN

    def _void_evidence_from(self, loop: int) -> None:
        """A loop found faulty may have counted what never passed: its neighbours drop that."""
        other, cam = self._l_other[loop], self._l_cam[loop]
        self._counted[loop] = 0.0
        if other >= 0:
            self._loop_runs[[_SILENT_BY_LOOP, _STUCK_BY_LOOP], other] = 0.0
        if cam >= 0:
            self._cam_runs[[_BLANK_BY_LOOPS, _SAME_BY_LOOPS], cam] = 0.0

    def _open_fault(self, detector: str, kind: FaultKind, start: float, t: float) -> None:
        self._open[detector] = len(self._events)
        self._events.append(FaultEvent(detector, kind, float(start), None, detected_s=t))

    def _close(self, detector: str, t: float) -> None:
        i = self._open.pop(detector)
        self._events[i] = dataclasses.replace(self._events[i], end_s=t)

    # -- estimates --------------------------------------------------------------------------

    def _estimate(
        self,
        t: float,
        dt: float,
        c: FloatArray,
        o: FloatArray,
        cc: FloatArray,
        cq: FloatArray,
        green: BoolArray,
        known: BoolArray,
    ) -> None:
        s = self.settings
        spacing = s.jam_spacing_m
        drain = dt / s.saturation_headway_s
        ok = self._loop_code == _OK
        self._full_s += dt
        self._full_s *= o >= FULL_OCCUPANCY
        held = ok & (self._full_s >= HOLD_S)
        self._last_seen[(c > 0) | (o > 0)] = t

        # loop rates (bias-corrected EWMA). An upstream loop under a standing queue sees no
        # arrivals (it counts them later, when the queue moves): while the queue covers it, its
        # rate is the one from before
        a = -np.expm1(-dt / self._smoothing)
        self._rate_m += a * ok * (c / dt - self._rate_m)
        self._rate_w += a * ok * (1.0 - self._rate_w)
        current = self._rate_m / np.maximum(self._rate_w, 1e-12)
        self._rate = np.where(held & self._l_is_up, self._rate, current)

        lt = self._loop_table
        lt[_COUNT, :-1] = c
        lt[_WORKS, :-1] = ok
        lt[_HELD, :-1] = held
        lt[_RATE : _TREND + 1, :-1] = self._rate
        lt[_LIVE, :-1] = ok & (self._rate_w[0] > 0)
        lt[_GAP, :-1] = t - self._last_seen
        sl, ul = lt[:, self._stop], lt[:, self._up]
        s_ok, u_ok = sl[_WORKS] > 0, ul[_WORKS] > 0
        s_held, u_held = sl[_HELD] > 0, ul[_HELD] > 0
        ct = self._cam_table
        ct[0, :-1] = cc
        ct[1, :-1] = cq
        ct[2, :-1] = self._cam_code == _OK
        cl = ct[:, self._cam]
        l_cc, l_cq, c_ok = cl[0], cl[1], cl[2] > 0
        n_ok = c_ok.astype(np.int64) + u_ok + s_ok

        # history learns from the arrival source while another sensor can vouch for it
        u_free = u_ok & ~u_held
        usable = ((n_ok >= 2) | self._single) & (u_ok | s_ok)
        source = np.where(u_ok, self._up, self._stop)
        sample = np.where(u_ok, ul[_COUNT], sl[_COUNT]) / dt
        history = self._history(t, dt, sample, usable, source)

        s_live, u_live = sl[_LIVE] > 0, ul[_LIVE] > 0
        arrival = np.where(u_live, ul[_RATE], np.where(s_live, sl[_RATE], history))
        trend = np.where(u_live, ul[_TREND], np.where(s_live, sl[_TREND], history))
        self.arrival_rate = arrival
        self.discharge_rate = np.where(
            s_live, sl[_RATE], np.minimum(arrival, 1.0 / s.saturation_headway_s)
        )
        self.stop_gap_s = np.where(s_ok, sl[_GAP], np.inf)
        self.upstream_gap_s = np.where(u_ok, ul[_GAP], np.inf)

        # loop-only queue: a point queue fed by arrivals while the lane is held at red, drained
        # by the stop loop's counts (or at saturation flow), at least as long as the loops it
        # covers say. (A simulated stop loop 1 m before the line misses the first standing
        # vehicle, which stops just short of it: it only tells that the queue discharges.)
        blocked = np.where(known, ~green, np.where(s_ok, s_held, u_held))
        inflow = np.where(u_free, ul[_COUNT], trend * dt)
        outflow = np.where(s_ok, sl[_COUNT], drain)
        q = np.maximum(self._q_loops + np.where(blocked, inflow, -outflow), 0.0)
        np.maximum(q, self._n_stop * s_held, out=q)
        np.maximum(q, self._n_up * (blocked & u_held), out=q)
        self._q_loops = q

        # camera: vehicles beyond a full zone arrive at the arrival trend and enter the zone as
        # vehicles leave it at the stop line; they stand while the zone's vehicles stand
        full = c_ok & (l_cc >= self._zone_full_q)
        leaving = np.where(blocked, 0.0, outflow)
        beyond = self._beyond + np.where(full, trend * dt - leaving, -np.maximum(leaving, drain))
        self._beyond = np.maximum(beyond, 0.0) * c_ok
        standing = l_cq >= self._zone_full_q
        bound = np.maximum(self._n_stop * s_held, self._n_up * u_held)
        self.queue = np.where(c_ok, np.maximum(l_cq + self._beyond * standing, bound), q)
        free_zone = np.maximum(self._zone - self.queue * spacing, 0.0)
        self.approaching = np.where(
            c_ok,
            np.maximum(l_cc - l_cq, 0.0) + self._beyond * ~standing,
            arrival * free_zone / s.free_speed_mps,
        )

        if self._open:
            weight = CAMERA_WEIGHT * c_ok + UPSTREAM_WEIGHT * u_ok + STOP_WEIGHT * s_ok
            self.confidence = HISTORY_CONFIDENCE + (1.0 - HISTORY_CONFIDENCE) * weight
            lost = np.bincount(
                self._x_group, weights=n_ok[self._x_lanes] == 0, minlength=len(self._x_index)
            )
            self._blind = self._x_unsensed | (lost > 0)
        else:
            self.confidence = self._sound_confidence
            self._blind = self._x_unsensed

    def _history(
        self, t: float, dt: float, sample: FloatArray, usable: BoolArray, source: IntArray
    ) -> FloatArray:
        """Queue this step's sample; commit old samples; the profile value for now."""
        p = self._pend_pos
        if p % HISTORY_BLOCK == 0 and not math.isnan(self._pend_t[p]):
            self._commit(slice(p, p + HISTORY_BLOCK))
        self._pend_rate[p] = sample
        self._pend_ok[p] = usable
        self._pend_src[p] = source
        self._pend_t[p], self._pend_dt[p] = t, dt
        self._pend_pos = (p + 1) % len(self._pend_t)

        key = (self._bin(t), self._hist_version)
        if key != self._hist_key:
            b = key[0]
            weight = self._prof_time[:, b]
            mean = self._mean_sum / np.maximum(self._mean_time, 1e-12)
            value = self._prof_sum[:, b] / np.maximum(weight, 1e-300)
            self._hist_value = np.where(weight > 0, value, mean)
            self._hist_key = key
        return self._hist_value

    def _commit(self, rows: slice) -> None:
        """Add a block of old samples to the profile, skipping those a loop fault covers."""
        s = self.settings
        when = self._pend_t[rows][:, None]
        src = self._pend_src[rows]
        rate = self._pend_rate[rows]
        bad_start = np.append(self._bad_start, np.inf)[src]
        bad_end = np.append(self._bad_end, np.inf)[src]
        valid = self._pend_ok[rows] & ~((bad_start <= when) & (when <= bad_end))
        weight = valid * self._pend_dt[rows][:, None]
        bins = ((self._pend_t[rows] % DAY_S) // s.profile_bin_s).astype(np.int64)
        bins %= self._prof_sum.shape[1]
        memory_s = s.profile_memory_days * s.profile_bin_s
        for b in np.unique(bins):
            sel = bins == b
            vehicles = (rate[sel] * weight[sel]).sum(axis=0)
            seconds = weight[sel].sum(axis=0)
            fade = np.exp(-seconds / memory_s)
            self._prof_sum[:, b] = self._prof_sum[:, b] * fade + vehicles
            self._prof_time[:, b] = self._prof_time[:, b] * fade + seconds
            self._mean_sum += vehicles
            self._mean_time += seconds
        self._hist_version += 1

    def _bin(self, t: float) -> int:
        return int((t % DAY_S) // self.settings.profile_bin_s) % self._prof_sum.shape[1]
