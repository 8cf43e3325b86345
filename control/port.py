"""The controller port: what a controller is given, and what it answers.

A controller sees only what field equipment reports: inductive loops, cameras and an
ambulance's GPS. The same port is driven by ``sim/`` (SUMO) and by the field service (MQTT).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import numpy as np
import numpy.typing as npt

from citybrain.control.model import Intersection


class DetectorKind(StrEnum):
    STOP_LOOP = "stop_loop"
    """Inductive loop a metre before the stop line."""
    UPSTREAM_LOOP = "upstream_loop"
    """Inductive loop some way up the approach."""
    CAMERA = "camera"
    """Camera zone covering the approach up to the stop line."""


@dataclass(frozen=True, slots=True)
class DetectorSpec:
    """Where a detector sits: its lane, and how far its downstream end is from the stop line."""

    id: str
    kind: DetectorKind
    intersection: str
    lane: str
    distance_m: float
    """Distance from the stop line to the detector (loops) or to the zone's far end (cameras)."""


@dataclass(frozen=True)
class Layout:
    """The intersections a controller runs and the detectors it can read."""

    intersections: tuple[Intersection, ...]
    loops: tuple[DetectorSpec, ...]
    cameras: tuple[DetectorSpec, ...]
    lane_length_m: Mapping[str, float] = field(default_factory=dict)
    """Length of every approach lane (and of detected out lanes), from the road geometry."""

    def loops_on(self, lane: str, kind: DetectorKind) -> tuple[int, ...]:
        return tuple(i for i, d in enumerate(self.loops) if d.lane == lane and d.kind == kind)

    def cameras_on(self, lane: str) -> tuple[int, ...]:
        return tuple(i for i, d in enumerate(self.cameras) if d.lane == lane)


IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class GpsFix:
    """An emergency vehicle's reported position (a GPS fix, with its noise)."""

    vehicle: str
    time_s: float
    x: float
    y: float
    speed_mps: float


class SignalView(Protocol):
    """What a signal reports about itself: the phase it serves or is changing to."""

    @property
    def phase(self) -> int: ...
    @property
    def in_clearance(self) -> bool: ...
    @property
    def green_since(self) -> float: ...


@dataclass(frozen=True)
class Readings:
    """One sampling instant of every detector, indexed as in the ``Layout``.

    Loops: vehicles counted since the previous reading, and the fraction of the last interval
    the loop was occupied (0..1). Cameras: vehicles seen in the zone and those of them seen
    standing (a queue). ``signals``: each intersection's own report of what it serves.
    Arrays are owned by the reader; a controller must not keep them.
    """

    time_s: float
    loop_count: IntArray
    loop_occupancy: FloatArray
    camera_count: IntArray
    camera_queue: IntArray
    signals: Mapping[str, SignalView]
    gps: tuple[GpsFix, ...] = ()


@dataclass(frozen=True, slots=True)
class PhaseRequest:
    """Ask an intersection's signal to serve green phase ``phase`` (an index of its phases).

    ``hold`` declares a mode in which the green may run past its maximum (rest in green while
    no other phase has demand, or an emergency preemption); the envelope reports such holds.
    """

    intersection: str
    phase: int
    hold: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    """A controller's answer for one instant: requests, and optional notes for the logs."""

    requests: tuple[PhaseRequest, ...] = ()
    notes: Mapping[str, str] = field(default_factory=dict)


class Controller(Protocol):
    """Decides which green phase each intersection should serve.

    ``uses_detectors`` lets the adapter skip reading detectors for a controller that ignores
    them (a fixed plan). ``decide`` is called once per sampling instant, in time order.
    """

    name: str
    uses_detectors: bool
    signal_program: str | None
    """None, or the name of a program the signal runs by itself (the controller then only
    watches): ``"own"`` is whatever program the signal itself loaded (the city's plan),
    ``"actuated"`` SUMO's built-in actuated logic on the signal's phases."""

    def decide(self, readings: Readings) -> Decision: ...
