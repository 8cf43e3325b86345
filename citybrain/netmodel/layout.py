"""The detector layout of a net's approaches: the city's own detectors, and field-like ones added.

Every approach gets a stop-line loop, an upstream loop and a camera zone. Where the city has
detectors of its own on an approach (its loops and cameras, ``CityDetector``), the layout uses
them under their own ids; ``DetectorPlacement.source`` chooses. The layout is pure data
(``control.port.DetectorSpec``); ``sim/detectors.py`` writes the added ones for SUMO.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from citybrain.control.model import Intersection
from citybrain.control.port import DetectorKind, DetectorSpec, Layout

PREFIX = "cb"
"""Ids of the detectors citybrain adds begin with this."""
STOP_LOOP_MAX_M = 10.0
"""A city loop this close to the stop line (or closer) serves as the approach's stop-line loop."""
UPSTREAM_LOOP_MAX_M = 250.0
"""A city loop farther up than the stop-line range and up to this far serves as upstream loop."""
CAMERA_END_MAX_M = 10.0
"""A city area detector whose zone ends this close to the stop line serves as the camera."""


class CityDetectorKind(StrEnum):
    LOOP = "loop"
    """An induction loop (E1)."""
    AREA = "area"
    """A lane-area detector (E2)."""


@dataclass(frozen=True, slots=True)
class CityDetector:
    """A detector the city already has (in SUMO, one the scenario's files define)."""

    id: str
    kind: CityDetectorKind
    lane: str
    """The lane of a loop; the last (most downstream) lane of an area detector."""
    pos_m: float
    """A loop's position on its lane; where an area detector ends on its last lane."""
    length_m: float = 0.0
    """An area detector's length (over all its lanes); 0 for a loop."""


class DetectorSource(StrEnum):
    """Which detectors a run reads."""

    BOTH = "both"
    """The scenario's own where an approach has them, citybrain's added where it does not."""
    CITY = "city"
    """Only the scenario's own (an approach without them goes undetected)."""
    ADDED = "added"
    """Only citybrain's own placement (the scenario's detectors are ignored)."""


@dataclass(frozen=True, slots=True)
class DetectorPlacement:
    stop_loop_m: float = 2.0
    """Stop-line loop: distance from the stop line (2 m: a car standing at the line covers it)."""
    upstream_loop_m: float = 60.0
    """Upstream loop: distance from the stop line (clamped to the lane)."""
    camera_m: float = 100.0
    """Camera zone length, ending at the stop line (clamped to the lane)."""
    source: DetectorSource = DetectorSource.BOTH
    """Use the scenario's own detectors, citybrain's added ones, or both (see the enum)."""


class LaneGeometry(Protocol):
    """What detector placement needs from the road network."""

    def length(self, lane: str) -> float: ...
    def predecessor(self, lane: str) -> str | None:
        """The one lane leading into ``lane``, if there is exactly one."""
        ...


def upstream_path(geometry: LaneGeometry, lane: str, reach_m: float) -> list[tuple[str, float]]:
    """Lanes from the stop line upstream, until ``reach_m`` is covered or the road branches."""
    path = [(lane, geometry.length(lane))]
    covered = path[0][1]
    seen = {lane}
    while covered < reach_m:
        prev = geometry.predecessor(path[-1][0])
        if prev is None or prev in seen:
            break
        seen.add(prev)
        path.append((prev, geometry.length(prev)))
        covered += path[-1][1]
    return path


def build_layout(
    intersections: tuple[Intersection, ...],
    geometry: LaneGeometry,
    placement: DetectorPlacement | None = None,
    city: Sequence[CityDetector] = (),
) -> Layout:
    """Place detectors on every incoming lane of every intersection.

    A camera looks ``camera_m`` up the approach and the upstream loop sits ``upstream_loop_m``
    up it, over the lanes leading into a short approach lane where the road does not branch
    (a junction split into a short stub does not blind the detectors). ``city`` are the
    scenario's own detectors; with ``placement.source`` both or city, an approach that has
    one of a kind uses it instead of an added one (see ``city_detectors``).
    """
    placement = placement or DetectorPlacement()
    own = city if placement.source is not DetectorSource.ADDED else ()
    add = placement.source is not DetectorSource.CITY
    loops: list[DetectorSpec] = []
    cameras: list[DetectorSpec] = []
    lengths: dict[str, float] = {}
    reach = max(placement.camera_m, placement.upstream_loop_m)
    for x in intersections:
        for lane in x.in_lanes:
            if not lane or lane in lengths or not _is_road(lane):
                continue
            path = upstream_path(geometry, lane, reach)
            covered = sum(length for _, length in path)
            lengths[lane] = covered
            found = city_detectors(x.id, path, own, placement.upstream_loop_m)
            stop = min(placement.stop_loop_m, path[0][1] / 2)
            upstream = max(stop, min(placement.upstream_loop_m, covered - 0.5))
            camera = min(placement.camera_m, covered)
            wanted = (
                (DetectorKind.STOP_LOOP, f"{PREFIX}_s_{lane}", stop, loops),
                (DetectorKind.UPSTREAM_LOOP, f"{PREFIX}_u_{lane}", upstream, loops),
                (DetectorKind.CAMERA, f"{PREFIX}_c_{lane}", camera, cameras),
            )
            for kind, name, distance, into in wanted:
                spec = found.get(kind)
                if spec is not None:
                    into.append(spec)
                elif add:
                    into.append(DetectorSpec(name, kind, x.id, lane, distance))
    return Layout(intersections, tuple(loops), tuple(cameras), lengths)


def _is_road(lane: str) -> bool:
    """Incoming lanes of crossings and walking areas are internal lanes (``:...``): no loops."""
    return not lane.startswith(":")


def city_detectors(
    signal: str,
    path: list[tuple[str, float]],
    found: Sequence[CityDetector],
    upstream_loop_m: float,
) -> dict[DetectorKind, DetectorSpec]:
    """The scenario's own detectors that serve one approach, by the role each can play.

    ``path`` is the approach from its stop line upstream (``upstream_path``). Loops count on
    the approach lane itself: the one nearest the stop line within ``STOP_LOOP_MAX_M`` is the
    stop-line loop, the one nearest ``upstream_loop_m`` farther up (to ``UPSTREAM_LOOP_MAX_M``)
    the upstream loop. An area detector that ends on the approach lane within
    ``CAMERA_END_MAX_M`` of the stop line is the camera (its zone reaches its length up the
    approach), the longest one if several.
    """
    lane, lane_length = path[0]
    roles: dict[DetectorKind, tuple[float, DetectorSpec]] = {}
    for d in found:
        if d.kind is CityDetectorKind.LOOP:
            if d.lane != lane:
                continue
            distance = lane_length - d.pos_m
            if distance <= STOP_LOOP_MAX_M:
                kind, rank = DetectorKind.STOP_LOOP, distance
            elif distance <= UPSTREAM_LOOP_MAX_M:
                kind, rank = DetectorKind.UPSTREAM_LOOP, abs(distance - upstream_loop_m)
            else:
                continue
        else:
            if d.lane != lane or lane_length - d.pos_m > CAMERA_END_MAX_M:
                continue
            distance = (lane_length - max(d.pos_m, 0.0)) + d.length_m
            kind, rank = DetectorKind.CAMERA, -distance
        best = roles.get(kind)
        if best is None or rank < best[0]:
            roles[kind] = (rank, DetectorSpec(d.id, kind, signal, lane, max(distance, 0.0)))
    return {kind: spec for kind, (_, spec) in roles.items()}
