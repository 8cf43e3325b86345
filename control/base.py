"""What detector-driven controllers share: the estimator, phase tables, a plan fallback."""

from __future__ import annotations

import numpy as np

from citybrain.control.envelope import next_green_phase, plan_position
from citybrain.control.estimate import EstimatorSettings, TrafficEstimator
from citybrain.control.movements import PhaseTable, phase_tables
from citybrain.control.port import Decision, Layout, PhaseRequest, Readings, SignalView

SATURATION_VEH_S = 0.5
"""Saturation flow of one lane (1800 veh/h)."""
JAM_SPACING_M = 7.5


class EstimatingController:
    """Base of the controllers that decide from the detector layer's estimates.

    Subclasses implement ``choose``; an intersection whose detectors are all gone on some
    approach (``blind``) runs its stored plan instead, and says so in the decision notes.
    """

    name = "estimating"
    uses_detectors = True
    signal_program: str | None = None

    def __init__(self, layout: Layout, estimator: EstimatorSettings | None = None) -> None:
        self.layout = layout
        self.estimator = TrafficEstimator(layout, estimator)
        self.tables = phase_tables(layout.intersections, self.estimator.lane_index)
        lengths = [layout.lane_length_m.get(lane, 100.0) for lane in self.estimator.lanes]
        self.capacity = np.maximum(np.array(lengths, dtype=np.float64) / JAM_SPACING_M, 1.0)

    def decide(self, readings: Readings) -> Decision:
        self.estimator.update(readings)
        self.prepare(readings)
        requests = []
        notes: dict[str, str] = {}
        for k, table in enumerate(self.tables):
            x = table.intersection
            view = readings.signals[x.id]
            if self.estimator.blind(x.id):
                step, _ = plan_position(x, readings.time_s)
                requests.append(PhaseRequest(x.id, next_green_phase(x, step)))
                notes[x.id] = "blind: running the stored plan"
                continue
            requests.append(self.choose(k, table, view, readings.time_s))
        return Decision(tuple(requests), notes)

    def prepare(self, readings: Readings) -> None:
        """Work shared by every intersection's choice at this instant (after the estimates)."""

    def choose(self, k: int, table: PhaseTable, view: SignalView, now_s: float) -> PhaseRequest:
        raise NotImplementedError
