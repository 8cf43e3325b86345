"""One driving step, shared by the simulator and the field service.

Given one instant's ``Readings``, the controller decides and each intersection's safety
envelope turns its request (with the controller's declared hold) into the lamp states to
show. ``sim/runner.py`` applies those states to SUMO; the field service publishes them over
MQTT. Both call ``SignalDriver.step``, so a controller behaves the same in both worlds.

Pure: no SUMO, no MQTT, no clock (the decision's CPU time is measured with the thread's
CPU clock, for the metrics only).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from citybrain.control.envelope import EnvelopeTiming, SafetyEnvelope
from citybrain.control.model import Intersection
from citybrain.control.port import (
    Controller,
    Decision,
    FloatArray,
    GpsFix,
    IntArray,
    Readings,
)


@dataclass(frozen=True, slots=True)
class SignalOutput:
    """What one intersection shows from this instant on."""

    intersection: str
    state: str
    """Link states (SUMO's ``rRyYgGu...`` letters, one per signal link)."""
    phase: int
    """The green phase shown, or the one a change interval leads to."""
    hold: bool
    """Whether the controller declared a hold (rest in green, preemption)."""
    in_clearance: bool


@dataclass(frozen=True)
class DriveStep:
    """The outcome of one instant: the decision, and what each signal shows."""

    time_s: float
    decision: Decision
    holds: Mapping[str, bool]
    """The declared hold of every intersection (False where none was declared)."""
    outputs: tuple[SignalOutput, ...] = ()
    """One per intersection, in the layout's order; empty when the controller runs a program
    inside the signal (it only watches, nothing goes through the envelopes)."""
    decide_ns: int = 0
    """CPU time of ``controller.decide``, in nanoseconds."""
    states: Mapping[str, str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "states", {o.intersection: o.state for o in self.outputs})


def apply_decision(
    decision: Decision,
    envelopes: Mapping[str, SafetyEnvelope],
    intersections: Iterable[Intersection],
    time_s: float,
) -> tuple[SignalOutput, ...]:
    """Pass a decision through each intersection's envelope: the states to show at ``time_s``.

    An intersection the decision does not mention gets no request (the envelope keeps its
    green, or ends it at its maximum); the last request for an intersection wins.
    """
    requests = {r.intersection: r.phase for r in decision.requests}
    holds = {r.intersection: r.hold for r in decision.requests}
    outputs = []
    for x in intersections:
        envelope = envelopes[x.id]
        hold = holds.get(x.id, False)
        state = envelope.step(time_s, requests.get(x.id), hold=hold)
        outputs.append(SignalOutput(x.id, state, envelope.phase, hold, envelope.in_clearance))
    return tuple(outputs)


class SignalDriver:
    """A controller and one safety envelope per intersection, stepped together."""

    def __init__(
        self,
        controller: Controller,
        intersections: Iterable[Intersection],
        timing: EnvelopeTiming,
        start_s: float,
    ) -> None:
        self.controller = controller
        self.intersections = tuple(intersections)
        self.envelopes: dict[str, SafetyEnvelope] = {
            x.id: SafetyEnvelope(x, timing, start_s) for x in self.intersections
        }
        self.own_program = controller.signal_program is not None
        """The controller runs a program inside the signal: envelopes are not stepped."""

    def readings(
        self,
        time_s: float,
        loop_count: IntArray,
        loop_occupancy: FloatArray,
        camera_count: IntArray,
        camera_queue: IntArray,
        gps: tuple[GpsFix, ...] = (),
    ) -> Readings:
        """One instant's readings, with the envelopes as each signal's own report."""
        return Readings(
            time_s, loop_count, loop_occupancy, camera_count, camera_queue, self.envelopes, gps
        )

    def step(self, readings: Readings) -> DriveStep:
        """Decide, then step every envelope: what each signal shows from ``readings.time_s``."""
        tick = time.thread_time_ns()  # CPU time: a preempted process does not count
        decision = self.controller.decide(readings)
        spent = time.thread_time_ns() - tick
        holds = {x.id: False for x in self.intersections}
        holds.update({r.intersection: r.hold for r in decision.requests})
        outputs: tuple[SignalOutput, ...] = ()
        if not self.own_program:
            outputs = apply_decision(decision, self.envelopes, self.intersections, readings.time_s)
        return DriveStep(readings.time_s, decision, holds, outputs, spent)
