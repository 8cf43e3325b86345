"""Stand-in field I/O for cabinets without hardware: synthetic detector counts, logged lamps.

``SyntheticDetectors`` draws each loop's count from a Poisson law at a fixed flow per lane
(and occupancies and camera counts to match); it is no traffic model (lamps do not hold cars
back) but exercises the whole path, cabinet to service, at the field's message rates: for a
trial deployment and for load benches. ``LampLog`` keeps what each signal shows and can write
every change as a line. A real cabinet implements ``Lamps`` and ``Detectors`` of
``citybrain/field/cabinet_agent.py`` on its own I/O instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TextIO

import numpy as np

from citybrain.control.port import Layout
from citybrain.field.cabinet import CabinetReadings
from citybrain.field.protocol import CameraReading, DetectorReport, LoopReading

VEHICLE_S = 0.25
"""Seconds one passing vehicle occupies a loop (for the synthetic occupancy)."""


class SyntheticDetectors:
    """Poisson counts at ``flow_vph`` vehicles per hour on every detected lane."""

    def __init__(self, layouts: Mapping[str, Layout], flow_vph: float, seed: int = 0) -> None:
        if not flow_vph >= 0:
            raise ValueError(f"flow must be >= 0 vehicles per hour, not {flow_vph}")
        self._layouts = layouts
        self._rate = flow_vph / 3600.0
        self._rng = np.random.default_rng(seed)

    def read(
        self, intersection: str, now_s: float
    ) -> tuple[DetectorReport | None, CabinetReadings | None]:
        layout = self._layouts.get(intersection)
        if layout is None:
            return None, None
        rng = self._rng
        counts = rng.poisson(self._rate, len(layout.loops)).astype(np.int64)
        occupancy = np.minimum(1.0, counts * VEHICLE_S).astype(np.float64)
        seen = rng.poisson(self._rate * 20.0, len(layout.cameras)).astype(np.int64)
        queue = rng.binomial(seen, 0.5).astype(np.int64)
        report = DetectorReport(
            intersection,
            now_s,
            {
                d.id: LoopReading(c, o)
                for d, c, o in zip(layout.loops, counts.tolist(), occupancy.tolist(), strict=True)
            },
            {
                d.id: CameraReading(c, q)
                for d, c, q in zip(layout.cameras, seen.tolist(), queue.tolist(), strict=True)
            },
        )
        return report, CabinetReadings(counts, occupancy, seen, queue)


class LampLog:
    """What each signal shows; every change written to ``out`` when given."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.states: dict[str, str] = {}
        self.changes = 0
        self._out = out

    def show(self, intersection: str, state: str, now_s: float) -> None:
        self.states[intersection] = state
        self.changes += 1
        if self._out is not None:
            print(f"{now_s:.3f} {intersection} {state}", file=self._out, flush=True)
