"""The safety envelope: the only way from a controller's request to a signal's lamps.

A small state machine per intersection. Controllers ask for a green phase; the envelope
decides what the lamps show: it holds every green for its minimum, and every change of
right-of-way goes through its change interval (yellow, then all-red), never skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from citybrain.control.model import Intersection, PlanStep, is_clearance


@dataclass(frozen=True, slots=True)
class EnvelopeTiming:
    min_green_s: float = 5.0
    """Shortest green; a phase the stored plan shows for less keeps the plan's own time."""


def plan_position(x: Intersection, time_s: float) -> tuple[int, float]:
    """Which step of the stored plan runs at ``time_s``, and for how long it has run.

    SUMO runs a static plan aligned to absolute time: position = (time - offset) mod cycle.
    """
    cycle = x.cycle_s
    pos = (time_s - x.plan_offset_s) % cycle if cycle > 0 else 0.0
    for k, step in enumerate(x.plan):
        if pos < step.duration_s:
            return k, pos
        pos -= step.duration_s
    return len(x.plan) - 1, x.plan[-1].duration_s


def next_green_phase(x: Intersection, step: int) -> int:
    """The green phase the plan serves at or after plan step ``step``."""
    n = len(x.plan)
    for k in range(n):
        phase = x.phase_of_state(x.plan[(step + k) % n].state)
        if phase is not None:
            return phase
    return 0


class SafetyEnvelope:
    """Turns phase requests into the link states one intersection shows."""

    def __init__(self, x: Intersection, timing: EnvelopeTiming, start_s: float) -> None:
        self.x = x
        self._min_green = [
            min(timing.min_green_s, _shortest_plan_green(x, p.state)) for p in x.phases
        ]
        k, elapsed = plan_position(x, start_s)
        self._pending: list[PlanStep] = []
        self._step_end = start_s
        self.phase = next_green_phase(x, k)
        self.green_since = start_s - elapsed
        self.shown = x.phases[self.phase].state
        if is_clearance(x.plan[k].state) or x.phase_of_state(x.plan[k].state) is None:
            rest = []
            j = k
            while x.phase_of_state(x.plan[j].state) is None:
                rest.append(x.plan[j])
                j = (j + 1) % len(x.plan)
            self._begin_clearance(rest, start_s - elapsed)

    @property
    def in_clearance(self) -> bool:
        return bool(self._pending)

    def green_time(self, now_s: float) -> float:
        """How long the current phase has been green (0 during a change interval)."""
        return 0.0 if self._pending else now_s - self.green_since

    def step(self, now_s: float, request: int | None) -> str:
        """Advance to ``now_s`` with the controller's current request; return the lamp states."""
        if request is not None and not 0 <= request < len(self.x.phases):
            raise ValueError(f"intersection {self.x.id} has no phase {request}")
        while self._pending and now_s >= self._step_end:
            self._pending.pop(0)
            if self._pending:
                self._step_end += self._pending[0].duration_s
                self.shown = self._pending[0].state
            else:
                self.green_since = self._step_end
                self.shown = self.x.phases[self.phase].state
        if (
            not self._pending
            and request is not None
            and request != self.phase
            and now_s - self.green_since >= self._min_green[self.phase]
        ):
            steps = [s for s in self.x.change_interval(self.phase, request) if s.duration_s > 0]
            self.phase = request
            if steps:
                self._begin_clearance(steps, now_s)
            else:
                self.green_since = now_s
                self.shown = self.x.phases[request].state
        return self.shown

    def _begin_clearance(self, steps: list[PlanStep], start_s: float) -> None:
        self._pending = list(steps)
        self._step_end = start_s + steps[0].duration_s
        self.shown = steps[0].state


def _shortest_plan_green(x: Intersection, state: str) -> float:
    durations = [s.duration_s for s in x.plan if s.state == state]
    return min(durations) if durations else float("inf")
