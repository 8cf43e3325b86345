"""``adaptive``: stay or switch by the delay each choice costs, coordinated with neighbours.

For every intersection, every second once its green has had its minimum:

* **Stay or switch (delay balance).** Keeping the green ``step_s`` longer lets the vehicles
  it would serve in that time pass now instead of waiting a whole round of the other phases
  (their change intervals plus the greens their queues need); it makes every vehicle waiting
  on red wait ``step_s`` longer. The green stays while the first outweighs the second: the
  extension rule of Miller's delay-minimizing actuation, fed with queue and arrival
  estimates from the detector layer. Switching pays the change interval, so greens are not
  cut short for a vehicle or two, nor kept for a trickle while queues build elsewhere.
* **Stalled greens.** A green whose stop lines have seen nobody cross for ``stall_s`` serves
  only what is arriving: a standing queue that does not move (its exit is blocked) is not
  counted as served, so the green is given up.
* **Which phase next.** The one with the largest waiting load: standing vehicles plus those
  approaching in the camera zone, on each lane counted by the share of its movements the
  phase lets go, weighted up the longer the lane has waited.
* **Neighbours.** A movement into a full lane counts for little (spillback). Two signals a
  few car lengths apart (a short link between them) act as one: a short link counts the
  queues waiting to enter it as its own demand, so the downstream signal opens for them, and
  the upstream signal does not feed a short link its neighbour shows red.
* **No starvation.** A phase serving a lane whose queue has had no green for ``max_red_s`` is
  served next; no green runs past ``max_green_s`` while others wait.
* **Rest.** With nobody waiting elsewhere the green rests (a declared hold).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from citybrain.control.base import SATURATION_VEH_S, EstimatingController
from citybrain.control.movements import PhaseTable
from citybrain.control.port import (
    Decision,
    DetectorKind,
    FloatArray,
    IntArray,
    Layout,
    PhaseRequest,
    Readings,
    SignalView,
)


@dataclass(frozen=True, slots=True)
class AdaptiveTiming:
    max_green_s: float = 60.0
    min_green_s: float = 5.0
    """The shortest green the delay balance plans with (the envelope enforces its own)."""
    max_red_s: float = 180.0
    """Vehicles that have waited this long are served next."""
    step_s: float = 2.0
    """The extension the delay balance weighs."""
    stall_s: float = 3.0
    """A green whose stop lines saw nobody cross for this long serves no standing queue."""
    zone_travel_s: float = 8.0
    """Time a moving vehicle takes to cross a camera zone to the stop line."""
    wait_weight_s: float = 120.0
    """A lane that has waited this long counts twice when choosing the next phase."""
    full_density: float = 0.8
    """An exit lane this full blocks the movements into it."""
    stuck_memory_s: float = 30.0
    """A queue with right of way seen not moving counts for little this long afterwards."""
    short_link_veh: float = 4.0
    """A lane holding fewer vehicles than this joins the two signals at its ends."""
    red_feed_weight: float = 0.3
    """How much a queue waiting at red to enter a short link pulls the link's signal open."""


class AdaptiveController(EstimatingController):
    name = "adaptive"

    def __init__(self, layout: Layout, timing: AdaptiveTiming | None = None) -> None:
        super().__init__(layout)
        self.timing = t = timing or AdaptiveTiming()
        lanes = self.estimator.lane_index
        stops = [
            (i, d.lane) for i, d in enumerate(layout.loops) if d.kind is DetectorKind.STOP_LOOP
        ]
        self._stop_loop = np.array([i for i, _ in stops], dtype=np.int64)
        self._stop_lane = np.array([lanes[lane] for _, lane in stops], dtype=np.int64)
        n = len(self.estimator.lanes)
        self._lane_green: FloatArray = np.full(n, np.nan)
        self._crossed_at: FloatArray = np.full(n, -np.inf)
        self._stalled_at: FloatArray = np.full(n, -np.inf)
        self._lost = [_lost_times(table) for table in self.tables]
        self._n_lanes = [
            np.array([max(float(s.sum()), 1.0) for s in table.lane_share]) for table in self.tables
        ]
        # per intersection, the share matrix over its own lanes only (a city-wide row per
        # phase would cost memory and time quadratic in the number of intersections)
        self._shares: list[FloatArray] = []
        self._share_cols: list[tuple[tuple[IntArray, ...], IntArray]] = []
        for table in self.tables:
            shares, phase_cols, approach_cols = _share_matrix(table)
            self._shares.append(shares)
            self._share_cols.append((phase_cols, approach_cols))
        self._short = self.capacity < t.short_link_veh
        feeds = sorted(
            {
                (i, o)
                for table in self.tables
                for ins, outs in zip(table.link_in, table.link_out, strict=True)
                for i, o in zip(ins.tolist(), outs.tolist(), strict=True)
                if o >= 0 and self._short[o]
            }
        )
        self._feed_in: IntArray = np.array([i for i, _ in feeds], dtype=np.int64)
        self._feed_out: IntArray = np.array([o for _, o in feeds], dtype=np.int64)
        self._demand: FloatArray = np.zeros(n)
        self._green_now = np.zeros(n, dtype=bool)
        self._blocked_lane = np.zeros(n, dtype=bool)

    def decide(self, readings: Readings) -> Decision:
        now = readings.time_s
        if np.isnan(self._lane_green).any():  # the first reading: every lane starts its wait now
            self._lane_green = np.where(np.isnan(self._lane_green), now, self._lane_green)
        crossed = readings.loop_count[self._stop_loop] > 0
        self._crossed_at[self._stop_lane[crossed]] = now
        return super().decide(readings)

    def prepare(self, readings: Readings) -> None:
        est = self.estimator
        demand = est.queue + est.approaching
        green = np.zeros(len(demand), dtype=bool)
        for table in self.tables:
            view = readings.signals[table.intersection.id]
            if not view.in_clearance:
                green[table.lanes[view.phase]] = True
        self._green_now = green
        if self._feed_in.size:
            # a queue waiting to enter a short link pulls the link's own signal open: fully
            # while its signal lets it go, a little while it waits at red
            pull = np.where(green[self._feed_in], 1.0, self.timing.red_feed_weight)
            demand = demand.copy()
            np.add.at(demand, self._feed_out, est.queue[self._feed_in] * pull)
        self._demand = demand
        # an exit lane too full to enter, or a short link its own signal shows red
        self._blocked_lane = (demand / self.capacity >= self.timing.full_density) | (
            self._short & ~green
        )

    def choose(self, k: int, table: PhaseTable, view: SignalView, now_s: float) -> PhaseRequest:
        x = table.intersection
        cur = view.phase
        if view.in_clearance:
            return PhaseRequest(x.id, cur)
        t = self.timing
        self._lane_green[table.lanes[cur]] = now_s
        est = self.estimator
        queue, demand = est.queue, self._demand
        blocked_lane = self._blocked_lane
        # this intersection's own lanes only: each approach lane belongs to one intersection
        lane_green, stalled_at = self._lane_green, self._stalled_at
        n = len(table.lanes)
        load = np.zeros(n)
        free = np.ones(n)
        for p in range(n):
            ins, outs = table.link_in[p], table.link_out[p]
            if ins.size == 0:
                continue
            blocked = (outs >= 0) & blocked_lane[np.maximum(outs, 0)]
            free[p] = 1.0 - 0.8 * (np.count_nonzero(blocked) / blocked.size)  # the mean
            lanes = table.lanes[p]
            moves = np.where(now_s - stalled_at[lanes] < t.stuck_memory_s, 0.2, 1.0)
            load[p] = free[p] * float((demand[lanes] * table.lane_share[p] * moves).sum())
        if float(load.max()) <= 0.0:
            return PhaseRequest(x.id, cur, hold=True)  # nobody anywhere: rest in green
        starving = np.array(
            [
                bool(((now_s - lane_green[lanes] >= t.max_red_s) & (queue[lanes] > 0.5)).any())
                for lanes in table.lanes
            ]
        )
        weight = np.array(
            [
                1.0 + float((now_s - lane_green[lanes]).max()) / t.wait_weight_s
                if lanes.size
                else 1.0
                for lanes in table.lanes
            ]
        )
        score = load * weight + np.where(starving, 1e6, 0.0)
        score[cur] = -np.inf
        best = int(np.argmax(score))
        if n == 1 or (load[best] <= 0.0 and not starving[best]):
            return PhaseRequest(x.id, cur, hold=True)  # nobody waits elsewhere: rest
        green = now_s - view.green_since
        if starving[best] or green >= t.max_green_s:
            return PhaseRequest(x.id, best)
        lanes = table.lanes[cur]
        crossed = float(self._crossed_at[lanes].max(initial=-np.inf))
        stalled = green >= t.stall_s and now_s - crossed >= t.stall_s
        if stalled:
            # a queue with right of way that does not move is blocked beyond the junction (a
            # permissive turn may just be waiting for a gap in the oncoming traffic)
            protected = table.lane_share[cur] >= 0.99
            self._stalled_at[lanes[(queue[lanes] > 0.5) & protected]] = now_s
        if self._stay(k, table, cur, best, load, free, stalled):
            return PhaseRequest(x.id, cur)
        return PhaseRequest(x.id, best)

    def _stay(
        self,
        k: int,
        table: PhaseTable,
        cur: int,
        best: int,
        load: FloatArray,
        free: FloatArray,
        stalled: bool,
    ) -> bool:
        """The delay balance: does keeping the green ``step_s`` longer save more than it costs?"""
        t = self.timing
        lanes = table.lanes[cur]
        if lanes.size == 0:
            return False
        shares = self._shares[k]
        cols, approach_cols = self._share_cols[k]
        own = cols[cur]
        # what the current green serves that the best other phase would not (lanes green in
        # both keep going whatever we choose)
        share = np.maximum(shares[cur, own] - shares[best, own], 0.0)
        est = self.estimator
        step = t.step_s
        coming = est.approaching[lanes] * min(step / t.zone_travel_s, 1.0)
        if not stalled:  # a queue that does not move (its exit is blocked) is not served
            coming = coming + self._demand[lanes] - est.approaching[lanes]
        served = free[cur] * float((np.minimum(coming, SATURATION_VEH_S * step) * share).sum())
        if served <= 0.0:
            return False
        # how long the current movements would wait for their next green if we switched now
        lost = self._lost[k]
        others = [p for p in range(len(load)) if p != cur and load[p] > 0.5]
        need = np.clip(load / (SATURATION_VEH_S * self._n_lanes[k]), t.min_green_s, t.max_green_s)
        back = sum(float(lost[cur, p]) + float(need[p]) for p in others) + float(lost.max())
        # everyone waiting on a lane the current green does not fully serve waits ``step`` longer
        approach = table.approach
        red = np.maximum(1.0 - shares[cur, approach_cols], 0.0)  # a permissive green half serves
        waiting = float((est.queue[approach] * red).sum())
        return bool(served * back >= waiting * step)


def _share_matrix(table: PhaseTable) -> tuple[FloatArray, tuple[IntArray, ...], IntArray]:
    """Per phase (rows), the share of each of the intersection's lanes' movements it lets go
    (columns: its phases' lanes and its approach lanes, in estimator lane order); and where
    each phase's ``lanes`` and the ``approach`` lanes are among those columns."""
    cols = np.unique(np.concatenate([*table.lanes, table.approach]).astype(np.int64))
    shares = np.zeros((len(table.lanes), len(cols)))
    lanes = tuple(np.searchsorted(cols, own).astype(np.int64) for own in table.lanes)
    for p, (own, share) in enumerate(zip(lanes, table.lane_share, strict=True)):
        shares[p, own] = share
    return shares, lanes, np.searchsorted(cols, table.approach).astype(np.int64)


def _lost_times(table: PhaseTable) -> FloatArray:
    """Seconds of change interval between each pair of green phases (row: from, col: to)."""
    x = table.intersection
    n = len(x.phases)
    lost = np.zeros((n, n))
    for a in range(n):
        for b in range(n):
            lost[a, b] = sum(s.duration_s for s in x.change_interval(a, b))
    return lost
