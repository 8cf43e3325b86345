"""``webster``: a fixed-time plan re-optimized from measured counts every few minutes.

Webster's method: with critical flow ratios y_p (the largest flow over saturation flow among
each phase's lanes, the flow being what the lane's stop-line loop counted over the last period:
lane by lane, unlike upstream detectors that a turn pocket's lanes share), Y = sum y_p and
lost time L per cycle, the cycle is C = (1.5 L + 5) / (1 - Y), clamped, and the effective
green is shared in proportion to y_p.
Phases run in plan order, each for its computed green.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from citybrain.control.base import SATURATION_VEH_S, EstimatingController
from citybrain.control.movements import PhaseTable
from citybrain.control.port import Layout, PhaseRequest, SignalView


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
        self._rate_sum = np.zeros(len(self.estimator.lanes))
        self._samples = 0
        self._request = [0] * len(self.tables)

    def _replan(self) -> None:
        rate = self._rate_sum / max(self._samples, 1)
        self._rate_sum[:] = 0.0
        self._samples = 0
        for k, table in enumerate(self.tables):
            x = table.intersection
            ratios = [
                float(rate[lanes].max()) / SATURATION_VEH_S if lanes.size else 0.0
                for lanes in table.lanes
            ]
            lost = sum(
                sum(s.duration_s for s in x.change_interval(p, (p + 1) % len(x.phases)))
                for p in range(len(x.phases))
            )
            _, self.greens[k] = webster_greens(ratios, lost, self.timing)

    def _tick(self, now_s: float) -> None:
        """Average arrival rates; replan at the end of every update period."""
        self._rate_sum += self.estimator.discharge_rate
        self._samples += 1
        if self._next_update is None:
            self._next_update = now_s + self.timing.update_s
        elif now_s >= self._next_update:
            self._replan()
            self._next_update = now_s + self.timing.update_s

    def choose(self, k: int, table: PhaseTable, view: SignalView, now_s: float) -> PhaseRequest:
        x = table.intersection
        if k == 0:
            self._tick(now_s)
        if view.in_clearance:
            return PhaseRequest(x.id, view.phase)
        if now_s - view.green_since >= self.greens[k][view.phase]:
            self._request[k] = (view.phase + 1) % len(x.phases)
        else:
            self._request[k] = view.phase
        return PhaseRequest(x.id, self._request[k])
