"""The controllers one can pick by name (``--controller NAME``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from citybrain.control.actuated import ActuatedController, ActuatedTiming
from citybrain.control.adaptive import AdaptiveController
from citybrain.control.fixed import FixedTimeController
from citybrain.control.greedy import GreedyController
from citybrain.control.local import ACTUATED_PROGRAM, OWN_PROGRAM, SignalProgramController
from citybrain.control.maxpressure import MaxPressureController
from citybrain.control.port import Controller, Layout
from citybrain.control.webster import WebsterController
from citybrain.errors import CitybrainError


class ControllerOptions(Protocol):
    """The settings sections controllers read (see ``citybrain.settings.Settings``)."""

    @property
    def actuated(self) -> ActuatedTiming: ...


CONTROLLERS: dict[str, Callable[[Layout, ControllerOptions], Controller]] = {
    "fixed": lambda layout, _: SignalProgramController(layout, "fixed", OWN_PROGRAM),
    "actuated": lambda layout, options: ActuatedController(layout, options.actuated),
    "sumo-actuated": lambda layout, _: SignalProgramController(
        layout, "sumo-actuated", ACTUATED_PROGRAM
    ),
    "webster": lambda layout, _: WebsterController(layout),
    "maxpressure": lambda layout, _: MaxPressureController(layout),
    "greedy": lambda layout, _: GreedyController(layout),
    "adaptive": lambda layout, _: AdaptiveController(layout),
    "plan": lambda layout, _: FixedTimeController(layout),
}


def check_controller(name: str) -> None:
    """Fail with the list of names when ``name`` is not a controller."""
    if name not in CONTROLLERS:
        raise CitybrainError(
            f"unknown controller {name!r}; choose one of: {', '.join(CONTROLLERS)}"
        )


def make_controller(name: str, layout: Layout, options: ControllerOptions) -> Controller:
    check_controller(name)
    return CONTROLLERS[name](layout, options)
