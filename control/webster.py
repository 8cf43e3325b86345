"""``webster``: a fixed-time plan re-optimized from measured counts every few minutes.

Webster's method: with critical flow ratios y_p (the largest demand over saturation flow among
each phase's lanes), Y = sum y_p and
lost time L per cycle, the cycle is C = (1.5 L + 5) / (1 - Y), clamped, and the effective
green is shared in proportion to y_p.
Phases run in plan order, each for its computed green.

A lane's demand over the last period is what its stop-line loop counted leaving (lane by lane,
unlike upstream detectors that a turn pocket's lanes share) plus what its queue grew by: under
saturation the stop line only counts what the green let through, and a plan made from that
alone would keep a starved approach starved.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from citybrain.control.base import SATURATION_VEH_S, EstimatingController
from citybrain.control.movements import PhaseTable
from citybrain.control.port import (
    Decision,
    DetectorKind,
    Layout,
    PhaseRequest,
    Readings,
    SignalView,
)


@dataclass(frozen=True, slots=True)
class WebsterTiming:
    update_s: float = 300.0
    min_cycle_s: float = 40.0
    max_cycle_s: float = 150.0
    min_green_s: float = 5.0


def webster_greens(
    ratios: list[float], lost_s: float, timing: WebsterTiming
) -> tuple[float, list[float]]:
    """Cycle length and green per phase for critical flow ratios ``ratios``."""
    y = sum(ratios)
    cycle = timing.max_cycle_s if y >= 0.95 else (1.5 * lost_s + 5.0) / (1.0 - y)
    cycle = min(max(cycle, timing.min_cycle_s), timing.max_cycle_s)
    effective = max(cycle - lost_s, timing.min_green_s * len(ratios))
    if y <= 0:
        return cycle, [effective / len(ratios)] * len(ratios)
    greens = [max(timing.min_green_s, effective * r / y) for r in ratios]
    return cycle, greens


class WebsterController(EstimatingController):
    name = "webster"

    def __init__(self, layout: Layout, timing: WebsterTiming | None = None) -> None:
        super().__init__(layout)
        self.timing = timing or WebsterTiming()
        self.greens = [[p.plan_duration_s for p in t.intersection.phases] for t in self.tables]
        self._next_update: float | None = None
        stop = {d.lane: i for i, d in enumerate(layout.loops) if d.kind is DetectorKind.STOP_LOOP}
        self._stop_loop = np.array(
            [stop.get(lane, -1) for lane in self.estimator.lanes], dtype=np.int64
        )
        self._departed = np.zeros(len(self.estimator.lanes))
        self._served = [[np.zeros(lanes.size) for lanes in t.lanes] for t in self.tables]
        """Per intersection and phase: stop-line departures of its lanes while it was green."""
        self._ratios = [[0.0] * len(t.lanes) for t in self.tables]
        self._queue_start = np.zeros(len(self.estimator.lanes))
        self._samples = 0
        self._request = [0] * len(self.tables)

    def decide(self, readings: Readings) -> Decision:
        # departures at each stop line this step: the loop's count where it works, else the
        # estimator's discharge rate
        departed = self.estimator.discharge_rate.copy()
        working = self._stop_loop >= 0
        departed[working] = readings.loop_count[self._stop_loop[working]]
        self._departed = departed
        return super().decide(readings)

    def _replan(self) -> None:
        samples = max(self._samples, 1)
        queue = self.estimator.queue
        grown = np.maximum(queue - self._queue_start, 0.0)
        self._queue_start = queue.copy()
        self._samples = 0
        for k, table in enumerate(self.tables):
            x = table.intersection
            # a lane served by several phases (a left turn with its own phase and a permissive
            # one) counts, for each phase, what crossed while that phase was green; what its
            # queue grew by is shared by the share each phase gives the lane
            total = np.zeros(len(queue))
            for lanes, share in zip(table.lanes, table.lane_share, strict=True):
                total[lanes] += share
            ratios = []
            for p, (lanes, share) in enumerate(zip(table.lanes, table.lane_share, strict=True)):
                if lanes.size == 0:
                    ratios.append(0.0)
                    continue
                waiting = grown[lanes] * share / np.maximum(total[lanes], 1e-9)
                demand = (self._served[k][p] + waiting) / samples
                self._served[k][p][:] = 0.0
                ratio = float(demand.max()) / SATURATION_VEH_S
                self._ratios[k][p] = 0.5 * (self._ratios[k][p] + ratio)  # smooth over periods
                ratios.append(self._ratios[k][p])
            lost = sum(
                sum(s.duration_s for s in x.change_interval(p, (p + 1) % len(x.phases)))
                for p in range(len(x.phases))
            )
            _, self.greens[k] = webster_greens(ratios, lost, self.timing)

    def _tick(self, now_s: float) -> None:
        """Count the period's samples; replan at the end of every update period."""
        self._samples += 1
        if self._next_update is None:
            self._next_update = now_s + self.timing.update_s
            self._queue_start = self.estimator.queue.copy()
        elif now_s >= self._next_update:
            self._replan()
            self._next_update = now_s + self.timing.update_s

    def choose(self, k: int, table: PhaseTable, view: SignalView, now_s: float) -> PhaseRequest:
        x = table.intersection
        if k == 0:
            self._tick(now_s)
        if view.in_clearance:
            return PhaseRequest(x.id, view.phase)
        self._served[k][view.phase] += self._departed[table.lanes[view.phase]]
        if now_s - view.green_since >= self.greens[k][view.phase]:
            self._request[k] = (view.phase + 1) % len(x.phases)
        else:
            self._request[k] = view.phase
        return PhaseRequest(x.id, self._request[k])
