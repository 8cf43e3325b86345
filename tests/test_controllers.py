"""Controllers decide from detector readings only: checked on a made-up crossing, no SUMO."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from citybrain.control.adaptive import AdaptiveController
from citybrain.control.greedy import GreedyController
from citybrain.control.maxpressure import MaxPressureController
from citybrain.control.port import Controller, Layout, Readings
from citybrain.control.webster import WebsterController, WebsterTiming
from citybrain.netmodel.layout import DetectorPlacement, build_layout

from .test_envelope import crossing

# crossing(): links 0,1 (lanes in0,in1) are green in phase 0; links 2,3 (in2,in3) in phase 1.


class Road:
    def length(self, lane: str) -> float:
        return 150.0

    def predecessor(self, lane: str) -> str | None:
        return None


@dataclass
class View:
    phase: int
    in_clearance: bool = False
    green_since: float = 0.0


def layout() -> Layout:
    return build_layout((crossing(),), Road(), DetectorPlacement())


def readings(
    lay: Layout, t: float, view: View, queue: dict[str, int], crossing_lanes: tuple[str, ...] = ()
) -> Readings:
    counts = np.zeros(len(lay.loops), dtype=np.int64)
    for i, d in enumerate(lay.loops):
        if d.lane in crossing_lanes and d.kind == "stop_loop":
            counts[i] = 1
    cam_q = np.array([queue.get(d.lane, 0) for d in lay.cameras], dtype=np.int64)
    return Readings(t, counts, np.zeros(len(lay.loops)), cam_q.copy(), cam_q, {"x": view})


def run_steps(
    ctl: Controller,
    lay: Layout,
    view: View,
    queue: dict[str, int],
    steps: int,
    start: float = 0.0,
    crossing_lanes: tuple[str, ...] = (),
) -> int:
    phase = view.phase
    for k in range(steps):
        decision = ctl.decide(readings(lay, start + k, view, queue, crossing_lanes))
        (request,) = decision.requests
        phase = request.phase
    return phase


@pytest.mark.parametrize("cls", [GreedyController, MaxPressureController, AdaptiveController])
def test_serves_the_approach_with_the_queue(cls: type) -> None:
    lay = layout()
    ctl = cls(lay)
    assert run_steps(ctl, lay, View(0), {"in2": 8, "in3": 6}, steps=12) == 1


@pytest.mark.parametrize("cls", [GreedyController, MaxPressureController, AdaptiveController])
def test_keeps_a_green_that_carries_more(cls: type) -> None:
    lay = layout()
    ctl = cls(lay)
    busy = {"in0": 10, "in1": 9, "in2": 1}
    assert run_steps(ctl, lay, View(0), busy, steps=12, crossing_lanes=("in0", "in1")) == 0


def test_adaptive_rests_with_a_declared_hold_when_nobody_waits() -> None:
    lay = layout()
    ctl = AdaptiveController(lay)
    decision = None
    for t in range(10):
        decision = ctl.decide(readings(lay, t, View(0), {}))
    assert decision is not None
    (request,) = decision.requests
    assert request.phase == 0 and request.hold


def test_adaptive_gives_up_an_idle_green_before_its_interval() -> None:
    lay = layout()
    ctl = AdaptiveController(lay)
    # vehicles crossed until t=5, then nothing; a small queue waits on the other approach
    for t in range(6):
        ctl.decide(readings(lay, t, View(0), {"in0": 5, "in2": 1}, crossing_lanes=("in0",)))
    ctl.decide(readings(lay, 6, View(0), {"in0": 5, "in2": 1}))  # a decision at t=6: stay
    phases = [
        ctl.decide(readings(lay, t, View(0), {"in2": 1})).requests[0].phase for t in range(7, 12)
    ]
    assert phases[-1] == 1  # switched within the 10 s interval: idle after 3 s without crossing


def test_maxpressure_prefers_the_movement_with_room_downstream() -> None:
    lay = layout()
    ctl = MaxPressureController(lay)
    # the exits leave the detected area, so pressure is the upstream density: the denser
    # approach wins even though the current green has vehicles too.
    assert run_steps(ctl, lay, View(0), {"in0": 3, "in2": 12}, steps=12) == 1


def test_webster_replans_green_in_proportion_to_measured_flows() -> None:
    lay = layout()
    ctl = WebsterController(lay, WebsterTiming(update_s=60))
    counts = np.zeros(len(lay.loops), dtype=np.int64)
    heavy = [i for i, d in enumerate(lay.loops) if d.kind == "stop_loop" and d.lane == "in0"]
    light = [i for i, d in enumerate(lay.loops) if d.kind == "stop_loop" and d.lane == "in2"]
    cams = np.zeros(len(lay.cameras), dtype=np.int64)
    for t in range(200):
        counts[:] = 0
        if t % 3 == 0:
            counts[heavy] = 1  # 1200 veh/h on in0
        if t % 9 == 0:
            counts[light] = 1  # 400 veh/h on in2
        ctl.decide(
            Readings(float(t), counts.copy(), np.zeros(len(lay.loops)), cams, cams, {"x": View(0)})
        )
    g0, g1 = ctl.greens[0]
    assert g0 > 1.5 * g1


def test_adaptive_keeps_each_intersections_tables_to_its_own_lanes(arterial_cfg: Path) -> None:
    """At city scale a table per intersection over every lane of the city is quadratic in
    memory and time: each intersection's share matrix covers its own lanes only."""
    from citybrain.sim.runner import prepare

    _, _, city = prepare(arterial_cfg)
    ctl = AdaptiveController(city)
    total = len(ctl.estimator.lanes)
    assert len(ctl.tables) == 5
    for k, table in enumerate(ctl.tables):
        own = np.unique(np.concatenate([*table.lanes, table.approach]))
        shares = ctl._shares[k]
        assert shares.shape == (len(table.lanes), len(own)) and len(own) < total
        for p, lanes in enumerate(table.lanes):
            # the columns of a phase's lanes hold that phase's shares, in the table's order
            cols = ctl._share_cols[k][0][p]
            assert np.array_equal(own[cols], lanes)
            assert np.array_equal(shares[p, cols], table.lane_share[p])
