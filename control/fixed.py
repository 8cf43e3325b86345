"""``plan``: the signal's stored plan, replayed through the safety envelope.

Where the signal can simply run its own program, that is ``fixed`` (``control/local.py``).
This controller serves what needs the plan's timing as requests: an escort on top of the
city's fixed-time plan, or a field service that drives a cabinet on its plan.
"""

from __future__ import annotations

from citybrain.control.envelope import next_green_phase, plan_position
from citybrain.control.port import Decision, Layout, PhaseRequest, Readings


class FixedTimeController:
    """Requests, at every instant, the green phase the stored plan serves (or changes to).

    Through the envelope, which uses the plan's own change intervals, the lamps then show
    exactly the stored plan, aligned to absolute time as SUMO runs it.
    """

    name = "plan"
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
