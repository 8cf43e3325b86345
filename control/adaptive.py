"""``adaptive``: phase choice by waiting load, with gap-out, spillback care and no starvation.

For every intersection, once its green has had its minimum:

* **Reconsider every ``interval_s``.** The phase with the largest waiting load is served:
  standing vehicles plus half of those approaching in the camera zone, on each lane counted
  by the share of the lane's movements the phase lets go (vehicles on a shared lane do not
  all turn the same way).
* **Gap-out.** A green whose stop lines saw no vehicle cross for ``passage_s``, that
  shows no queue and sees nobody approaching in its camera zones (a platoon on its way is
  not cut off) is idle: it is given up at once, without waiting for the next interval.
* **Spillback.** A movement whose exit lane is full counts for little: a green is not spent
  feeding a full lane.
* **No starvation.** A phase serving a lane whose queue has had no green for ``max_red_s`` is
  served next; no green runs past ``max_green_s`` while others wait.
* **Rest.** With nobody waiting elsewhere the green rests (a declared hold).

Status: a first version. It is not yet 10 % better than the best baseline everywhere (see
BENCHMARKS.md); coordination between neighbours is still to come.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from citybrain.control.base import EstimatingController
from citybrain.control.movements import PhaseTable
from citybrain.control.port import (
    Decision,
    DetectorKind,
    FloatArray,
    Layout,
    PhaseRequest,
    Readings,
    SignalView,
)


@dataclass(frozen=True, slots=True)
class AdaptiveTiming:
    max_green_s: float = 60.0
    passage_s: float = 3.0
    """A green with no vehicle crossing its stop lines for this long has done its work."""
    max_red_s: float = 180.0
    arriving_veh: float = 1.0
    """A green with this many vehicles approaching in its camera zones is not idle."""
    interval_s: float = 10.0
    """How often the phase choice is reconsidered while the green is in use."""
    """Vehicles that have waited this long are served next."""
    full_density: float = 0.8
    """An exit lane this full blocks the movements into it."""


class AdaptiveController(EstimatingController):
    name = "adaptive"

    def __init__(self, layout: Layout, timing: AdaptiveTiming | None = None) -> None:
        super().__init__(layout)
        self.timing = timing or AdaptiveTiming()
        lanes = self.estimator.lane_index
        stops = [
            (i, d.lane) for i, d in enumerate(layout.loops) if d.kind is DetectorKind.STOP_LOOP
        ]
        self._stop_loop = np.array([i for i, _ in stops], dtype=np.int64)
        self._stop_lane = np.array([lanes[lane] for _, lane in stops], dtype=np.int64)
        self._crossed_at: FloatArray = np.full(len(self.estimator.lanes), -np.inf)
        self._lane_green: FloatArray = np.full(len(self.estimator.lanes), np.nan)
        self._next: FloatArray = np.full(len(self.tables), -np.inf)
        self._request = [0] * len(self.tables)

    def decide(self, readings: Readings) -> Decision:
        if np.isnan(self._lane_green).any():  # the first reading: every lane starts its wait now
            self._lane_green = np.where(
                np.isnan(self._lane_green), readings.time_s, self._lane_green
            )
        crossed = readings.loop_count[self._stop_loop] > 0
        self._crossed_at[self._stop_lane[crossed]] = readings.time_s
        return super().decide(readings)

    def choose(self, k: int, table: PhaseTable, view: SignalView, now_s: float) -> PhaseRequest:
        x = table.intersection
        cur = view.phase
        if view.in_clearance:
            return PhaseRequest(x.id, cur)
        self._lane_green[table.lanes[cur]] = now_s
        est = self.estimator
        queue, moving = est.queue, est.approaching
        full = (queue + moving) / self.capacity >= self.timing.full_density
        n = len(table.lanes)
        load = np.zeros(n)
        for p in range(n):
            ins, outs = table.link_in[p], table.link_out[p]
            if ins.size == 0:
                continue
            blocked = (outs >= 0) & full[np.maximum(outs, 0)]
            lanes = table.lanes[p]
            waiting = (queue[lanes] + moving[lanes]) * (table.lane_share[p] > 0)
            load[p] = (1.0 - 0.8 * float(blocked.mean())) * float(waiting.sum())
        score = load.copy()
        red_too_long = (now_s - self._lane_green >= self.timing.max_red_s) & (queue > 0.5)
        starving = np.array([bool(red_too_long[lanes].any()) for lanes in table.lanes])
        lanes = table.lanes[cur]
        idle = lanes.size == 0 or (
            now_s - float(self._crossed_at[lanes].max()) >= self.timing.passage_s
            and float(queue[lanes].sum()) < 0.5
            and float((moving[lanes] * table.lane_share[cur]).sum()) < self.timing.arriving_veh
        )
        green = now_s - view.green_since
        due = now_s >= self._next[k] or green >= self.timing.max_green_s
        if not (due or idle or starving.any()):
            return PhaseRequest(x.id, self._request[k])  # a choice stands until reconsidered
        if starving.any():
            score = np.where(starving, score + 1e6, score)
        if green >= self.timing.max_green_s or idle:
            score[cur] = -np.inf
        best = int(np.argmax(score))
        self._next[k] = now_s + self.timing.interval_s
        if best == cur or score[best] <= 0:
            self._request[k] = cur
            return PhaseRequest(x.id, cur, hold=n == 1 or float(load.max()) <= 0)
        self._request[k] = best
        return PhaseRequest(x.id, best)
