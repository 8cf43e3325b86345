"""``actuated``: gap-out actuated control from the inductive loops, with min and max green.

Each intersection serves its green phases in plan order and skips a phase nobody waits for.
A green is extended while vehicles keep passing over its loops (each one buys
``passage_s``; a car standing on a loop, say a turn waiting for a gap, places a call but does
not extend), ends when the gap runs out or at ``max_green_s``, and rests when no other phase
has a call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from citybrain.control.model import Intersection
from citybrain.control.port import Decision, DetectorKind, Layout, PhaseRequest, Readings


@dataclass(frozen=True, slots=True)
class ActuatedTiming:
    min_green_s: float = 5.0
    max_green_s: float = 45.0
    passage_s: float = 3.0


class _Signal:
    def __init__(self, x: Intersection, layout: Layout) -> None:
        self.x = x
        self.phase_loops: list[np.ndarray] = []
        for p in range(len(x.phases)):
            idx: list[int] = []
            for lane in x.phase_lanes(p):
                idx += layout.loops_on(lane, DetectorKind.STOP_LOOP)
                idx += layout.loops_on(lane, DetectorKind.UPSTREAM_LOOP)
            self.phase_loops.append(np.array(sorted(idx), dtype=np.int64))
        self.calls = np.zeros(len(x.phases), dtype=bool)
        self.last_actuation = -np.inf
        self.served = -1
        self.request = 0


class ActuatedController:
    name = "actuated"
    uses_detectors = True
    signal_program: str | None = None

    def __init__(self, layout: Layout, timing: ActuatedTiming | None = None) -> None:
        self.timing = timing or ActuatedTiming()
        self._signals = [_Signal(x, layout) for x in layout.intersections]

    def decide(self, readings: Readings) -> Decision:
        t = readings.time_s
        passing = readings.loop_count > 0  # a vehicle went over the loop: extends a green
        present = passing | (readings.loop_occupancy > 0)  # someone is there: places a call
        requests = []
        for s in self._signals:
            view = readings.signals[s.x.id]
            for p, idx in enumerate(s.phase_loops):
                if idx.size and present[idx].any():
                    s.calls[p] = True
            if view.in_clearance:
                requests.append(PhaseRequest(s.x.id, view.phase))
                continue
            if view.phase != s.served:
                s.served = view.phase
                s.last_actuation = t
            s.calls[view.phase] = False
            idx = s.phase_loops[view.phase]
            if idx.size and passing[idx].any():
                s.last_actuation = t
            phase = self._choose(s, t - view.green_since, t)
            rest = phase == view.phase and not s.calls.any()
            requests.append(PhaseRequest(s.x.id, phase, hold=rest))
        return Decision(tuple(requests))

    def _choose(self, s: _Signal, green_s: float, t: float) -> int:
        cur = s.served
        if green_s < self.timing.min_green_s or not s.calls.any():
            return cur
        if green_s < self.timing.max_green_s and t - s.last_actuation < self.timing.passage_s:
            return cur
        n = len(s.calls)
        for k in range(1, n + 1):
            p = (cur + k) % n
            if s.calls[p]:
                return p
        return cur
