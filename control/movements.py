"""Index tables controllers share: which estimator lanes each phase serves, and where to.

Built once per run from the layout, so the per-step work is array arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from citybrain.control.model import Intersection
from citybrain.control.port import FloatArray, IntArray


@dataclass(frozen=True)
class PhaseTable:
    """For one intersection: per green phase, its lanes and its (in, out) lane pairs.

    Lane numbers index the estimator's lane arrays; an out lane that no detector covers
    (it leaves the controlled area) is -1.
    """

    intersection: Intersection
    lanes: tuple[IntArray, ...]
    """Per phase: approach lanes with at least one green link, each once."""
    link_in: tuple[IntArray, ...]
    """Per phase: the approach lane of each green link."""
    link_out: tuple[IntArray, ...]
    """Per phase: the lane each green link feeds (-1 when not detected)."""
    approach: IntArray
    """Every approach lane of the intersection."""
    lane_share: tuple[FloatArray, ...]
    """Per phase, per lane of ``lanes``: the share of the lane's movements the phase lets go
    (a permissive green counts half), as vehicles on a shared lane do not all go its way."""


def phase_tables(
    intersections: tuple[Intersection, ...], lane_index: dict[str, int]
) -> tuple[PhaseTable, ...]:
    return tuple(_table(x, lane_index) for x in intersections)


def _table(x: Intersection, lane_index: dict[str, int]) -> PhaseTable:
    lanes, link_in, link_out, shares = [], [], [], []
    per_lane: dict[str, int] = {}
    for link in x.links:
        for lane, _ in link.movements:
            per_lane[lane] = per_lane.get(lane, 0) + 1
    for phase in x.phases:
        ins: list[int] = []
        outs: list[int] = []
        for i in sorted(phase.green):
            link = x.links[i]
            for lane, out in link.movements:
                if lane in lane_index:
                    ins.append(lane_index[lane])
                    outs.append(lane_index.get(out, -1))
        own = sorted(set(ins))
        lanes.append(np.array(own, dtype=np.int64))
        weight = dict.fromkeys(own, 0.0)
        for i in phase.green:
            link = x.links[i]
            for lane, _ in link.movements:
                if lane in lane_index:
                    share = 1.0 if phase.state[i] == "G" else 0.5
                    weight[lane_index[lane]] += share / per_lane[lane]
        shares.append(np.array([min(weight[n], 1.0) for n in own], dtype=np.float64))
        link_in.append(np.array(ins, dtype=np.int64))
        link_out.append(np.array(outs, dtype=np.int64))
    approach = np.array(
        sorted({lane_index[lane] for lane in x.in_lanes if lane in lane_index}), dtype=np.int64
    )
    return PhaseTable(x, tuple(lanes), tuple(link_in), tuple(link_out), approach, tuple(shares))
