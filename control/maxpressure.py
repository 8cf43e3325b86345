"""``maxpressure``: Varaiya's max-pressure with saturation flows, from detector estimates.

Pressure of a phase: the sum over its green links of saturation flow x (density upstream -
density downstream), densities being estimated vehicles over the lane's storage, so that short
entry roads are not starved by long ones. A phase with vehicles that have waited past
``max_wait_s`` is served first. Decisions come every ``slot_s`` once the minimum green is over.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from citybrain.control.base import SATURATION_VEH_S, EstimatingController
from citybrain.control.movements import PhaseTable
from citybrain.control.port import Layout, PhaseRequest, SignalView


@dataclass(frozen=True, slots=True)
class MaxPressureTiming:
    slot_s: float = 10.0
    max_wait_s: float = 120.0


class MaxPressureController(EstimatingController):
    name = "maxpressure"

    def __init__(self, layout: Layout, timing: MaxPressureTiming | None = None) -> None:
        super().__init__(layout)
        self.timing = timing or MaxPressureTiming()
        self._next = np.full(len(self.tables), -np.inf)
        self._request = [0] * len(self.tables)
        self._served = [np.zeros(len(t.lanes)) for t in self.tables]

    def choose(self, k: int, table: PhaseTable, view: SignalView, now_s: float) -> PhaseRequest:
        x = table.intersection
        if view.in_clearance:
            return PhaseRequest(x.id, view.phase)
        self._served[k][view.phase] = now_s
        if now_s < self._next[k]:
            return PhaseRequest(x.id, self._request[k])
        est = self.estimator
        density = (est.queue + est.approaching) / self.capacity
        pressure = np.zeros(len(table.lanes))
        for p, (ins, outs) in enumerate(zip(table.link_in, table.link_out, strict=True)):
            down = np.where(outs >= 0, density[np.maximum(outs, 0)], 0.0)
            pressure[p] = SATURATION_VEH_S * float((density[ins] - down).sum())
        waiting = np.array([float(est.queue[lanes].sum()) for lanes in table.lanes])
        starved = (now_s - self._served[k] > self.timing.max_wait_s) & (waiting > 0)
        if starved.any():
            best = int(np.argmax(np.where(starved, now_s - self._served[k], -np.inf)))
        else:
            best = int(np.argmax(pressure))
            if pressure[best] <= pressure[view.phase]:
                best = view.phase
        self._request[k] = best
        self._next[k] = now_s + self.timing.slot_s
        return PhaseRequest(x.id, best)
