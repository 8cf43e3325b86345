"""``sumo-actuated``: the signal's own built-in actuated logic, running the net's own phases.

This is the baseline an engineer gets with one netconvert option: SUMO's gap-based actuated
control (its own detectors, min and max durations per phase). The controller sends nothing;
the adapter installs the program on the signal (see ``sim/programs.py``).
"""

from __future__ import annotations

from citybrain.control.port import Decision, Layout, Readings


class SignalProgramController:
    name = "sumo-actuated"
    uses_detectors = False
    signal_program: str | None = "actuated"

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def decide(self, readings: Readings) -> Decision:
        return Decision()
