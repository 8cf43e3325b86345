"""The controllers one can pick by name (``--controller NAME``)."""

from __future__ import annotations

from collections.abc import Callable

from citybrain.control.actuated import ActuatedController
from citybrain.control.fixed import FixedTimeController
from citybrain.control.port import Controller, Layout
from citybrain.errors import CitybrainError

CONTROLLERS: dict[str, Callable[[Layout], Controller]] = {
    "fixed": FixedTimeController,
    "actuated": ActuatedController,
}


def make_controller(name: str, layout: Layout) -> Controller:
    factory = CONTROLLERS.get(name)
    if factory is None:
        raise CitybrainError(
            f"unknown controller {name!r}; choose one of: {', '.join(CONTROLLERS)}"
        )
    return factory(layout)
