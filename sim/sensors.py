"""The sensor model: what field detectors would report, given what SUMO measured.

Cameras miss vehicles and sometimes count one twice; loops can fail (stuck on, or dead).
Everything is drawn from one seeded generator, so a run is reproducible.
"""

from __future__ import annotations

import numpy as np

from citybrain.control.port import DetectorKind, FloatArray, IntArray, Layout
from citybrain.sensornoise import LoopFault, SensorSettings


class SensorModel:
    """Applies the settings to true readings, in place of nothing: it returns new arrays."""

    def __init__(self, layout: Layout, settings: SensorSettings) -> None:
        self.settings = settings
        self._rng = np.random.default_rng(settings.seed)
        self.failed = self._pick_failed(layout)

    def _pick_failed(self, layout: Layout) -> IntArray:
        per = self.settings.failed_loops_per_intersection
        chosen: list[int] = []
        for x in layout.intersections:
            own = [
                i
                for i, d in enumerate(layout.loops)
                if d.intersection == x.id
                and d.kind in (DetectorKind.STOP_LOOP, DetectorKind.UPSTREAM_LOOP)
            ]
            if per and own:
                take = self._rng.choice(len(own), size=min(per, len(own)), replace=False)
                chosen += [own[int(k)] for k in take]
        return np.array(sorted(chosen), dtype=np.int64)

    def loops(self, count: IntArray, occupancy: FloatArray) -> tuple[IntArray, FloatArray]:
        if self.failed.size == 0:
            return count, occupancy
        count = count.copy()
        occupancy = occupancy.copy()
        count[self.failed] = 0
        occupancy[self.failed] = 1.0 if self.settings.loop_fault == LoopFault.STUCK_ON else 0.0
        return count, occupancy

    def cameras(self, count: IntArray, queue: IntArray) -> tuple[IntArray, IntArray]:
        miss, double = self.settings.camera_miss_rate, self.settings.camera_double_rate
        if miss == 0 and double == 0:
            return count, queue
        moving = np.maximum(count - queue, 0)
        seen_queue = self._rng.binomial(queue, 1.0 - miss)
        seen_moving = self._rng.binomial(moving, 1.0 - miss)
        if double > 0:
            seen_queue = seen_queue + self._rng.binomial(seen_queue, double)
            seen_moving = seen_moving + self._rng.binomial(seen_moving, double)
        return (seen_queue + seen_moving).astype(np.int64), seen_queue.astype(np.int64)
