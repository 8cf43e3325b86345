"""``greedy``: serve the phase with the most queued and approaching vehicles (RESCO's baseline).

Like RESCO's agent it decides at fixed intervals (10 s by default, counted from the last
decision, once the current green has had its minimum).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from citybrain.control.base import EstimatingController
from citybrain.control.movements import PhaseTable
from citybrain.control.port import Layout, PhaseRequest, SignalView


@dataclass(frozen=True, slots=True)
class GreedyTiming:
    interval_s: float = 10.0


class GreedyController(EstimatingController):
    name = "greedy"

    def __init__(self, layout: Layout, timing: GreedyTiming | None = None) -> None:
        super().__init__(layout)
        self.timing = timing or GreedyTiming()
        self._next = np.full(len(self.tables), -np.inf)
        self._request = [0] * len(self.tables)

    def choose(self, k: int, table: PhaseTable, view: SignalView, now_s: float) -> PhaseRequest:
        x = table.intersection
        if view.in_clearance or now_s < self._next[k]:
            return PhaseRequest(x.id, view.phase if view.in_clearance else self._request[k])
        load = self.estimator.queue + self.estimator.approaching
        demand = [float(load[lanes].sum()) for lanes in table.lanes]
        best = int(np.argmax(demand))
        if demand[best] <= demand[view.phase]:
            best = view.phase
        self._request[k] = best
        self._next[k] = now_s + self.timing.interval_s
        return PhaseRequest(x.id, best)
