"""What SUMO loaded for a scenario: each signal's programs and the one it runs, and the detectors.

A scenario's signal programs may come from its net, from additional files (the program loaded
last is the one SUMO runs) or be switched by WAUTs; its own detectors sit in additional
files. Rather than re-implement SUMO's loading rules, the harness asks SUMO: it loads the
scenario as the run will, and reads what it made of it before the first step
(``Backend.loaded``). These types hold the answer; no SUMO here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from citybrain.control.model import PlanStep
from citybrain.netmodel.layout import CityDetector


@dataclass(frozen=True, slots=True)
class LoadedProgram:
    """One signal program as SUMO holds it."""

    program_id: str
    kind: str
    """SUMO's type: ``static``, ``actuated``, ``delay_based``, ``NEMA``, ..."""
    steps: tuple[PlanStep, ...]


@dataclass(frozen=True, slots=True)
class LoadedSignal:
    id: str
    active: str
    """The program id SUMO runs at the window's start."""
    programs: Mapping[str, LoadedProgram]
    phase_index: int
    """The step of the active program shown at the window's start."""
    phase_left_s: float
    """How long that step still runs (its end minus the window's start)."""

    def offset_s(self, begin_s: float) -> float:
        """The active program's offset: where its cycle starts, aligned to absolute time."""
        steps = self.programs[self.active].steps
        cycle = sum(s.duration_s for s in steps)
        if cycle <= 0:
            return 0.0
        done = sum(s.duration_s for s in steps[: self.phase_index])
        elapsed = steps[self.phase_index].duration_s - self.phase_left_s
        position = done + max(elapsed, 0.0)  # an actuated step may run past its duration
        return (begin_s - position) % cycle


@dataclass(frozen=True)
class LoadedScenario:
    signals: Mapping[str, LoadedSignal] = field(default_factory=dict)
    detectors: tuple[CityDetector, ...] = ()
