"""Controllers that leave a signal to a program of its own: the city's plan, or SUMO's actuated.

``fixed`` is the signal's own program exactly as the scenario loaded it (static, actuated or
switched by WAUTs: whatever the city runs). ``sumo-actuated`` is the baseline an engineer gets
with one netconvert option: SUMO's gap-based actuated control on the signal's own phases (its
own detectors, min and max durations per phase); the adapter installs that program (see
``sim/programs.py``). Neither sends anything: the signal runs by itself and they only watch.
"""

from __future__ import annotations

from citybrain.control.port import Decision, Layout, Readings

OWN_PROGRAM = "own"
"""``signal_program`` of a controller that leaves the signal to whatever program it loaded."""
ACTUATED_PROGRAM = "actuated"
"""``signal_program`` of a controller that installs SUMO's actuated logic on the signal."""


class SignalProgramController:
    uses_detectors = False

    def __init__(self, layout: Layout, name: str, program: str) -> None:
        self.layout = layout
        self.name = name
        self.signal_program: str | None = program

    def decide(self, readings: Readings) -> Decision:
        return Decision()
