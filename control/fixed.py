"""``fixed``: the signal's own stored plan, untouched."""

from __future__ import annotations

from citybrain.control.envelope import next_green_phase, plan_position
from citybrain.control.port import Decision, Layout, PhaseRequest, Readings


class FixedTimeController:
    """Requests, at every instant, the green phase the stored plan serves (or changes to).

    Through the envelope, which uses the plan's own change intervals, the lamps then show
    exactly the stored plan, aligned to absolute time as SUMO runs it.
    """

    name = "fixed"
    uses_detectors = False
    signal_program: str | None = None

    def __init__(self, layout: Layout) -> None:
        self._intersections = layout.intersections

    def decide(self, readings: Readings) -> Decision:
        requests = []
        for x in self._intersections:
            step, _ = plan_position(x, readings.time_s)
            requests.append(PhaseRequest(x.id, next_green_phase(x, step)))
        return Decision(tuple(requests))
