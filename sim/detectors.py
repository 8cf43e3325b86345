"""Field-like detectors for every approach: a stop-line loop, an upstream loop and a camera zone.

The layout is pure data (``control.port.DetectorSpec``); this module places it on a SUMO net
and writes it as an additional file of E1 (induction loop) and E2 (lane area) detectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from xml.sax.saxutils import quoteattr

from citybrain.control.model import Intersection
from citybrain.control.port import DetectorKind, DetectorSpec, Layout

PREFIX = "cb"


@dataclass(frozen=True, slots=True)
class DetectorPlacement:
    stop_loop_m: float = 2.0
    """Stop-line loop: distance from the stop line (2 m: a car standing at the line covers it)."""
    upstream_loop_m: float = 60.0
    """Upstream loop: distance from the stop line (clamped to the lane)."""
    camera_m: float = 100.0
    """Camera zone length, ending at the stop line (clamped to the lane)."""


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
) -> Layout:
    """Place detectors on every incoming lane of every intersection.

    A camera looks ``camera_m`` up the approach and the upstream loop sits ``upstream_loop_m``
    up it, over the lanes leading into a short approach lane where the road does not branch
    (a junction split into a short stub does not blind the detectors).
    """
    placement = placement or DetectorPlacement()
    loops: list[DetectorSpec] = []
    cameras: list[DetectorSpec] = []
    lengths: dict[str, float] = {}
    reach = max(placement.camera_m, placement.upstream_loop_m)
    for x in intersections:
        for lane in x.in_lanes:
            if not lane or lane in lengths:
                continue
            path = upstream_path(geometry, lane, reach)
            covered = sum(length for _, length in path)
            lengths[lane] = covered
            stop = min(placement.stop_loop_m, path[0][1] / 2)
            upstream = max(stop, min(placement.upstream_loop_m, covered - 0.5))
            camera = min(placement.camera_m, covered)
            loops.append(
                DetectorSpec(f"{PREFIX}_s_{lane}", DetectorKind.STOP_LOOP, x.id, lane, stop)
            )
            loops.append(
                DetectorSpec(f"{PREFIX}_u_{lane}", DetectorKind.UPSTREAM_LOOP, x.id, lane, upstream)
            )
            cameras.append(
                DetectorSpec(f"{PREFIX}_c_{lane}", DetectorKind.CAMERA, x.id, lane, camera)
            )
    return Layout(intersections, tuple(loops), tuple(cameras), lengths)


def _locate(path: list[tuple[str, float]], distance_m: float) -> tuple[int, float]:
    """Which lane of the path lies ``distance_m`` before the stop line, and the offset on it."""
    for k, (_, length) in enumerate(path):
        if distance_m <= length or k == len(path) - 1:
            return k, max(length - distance_m, 0.0)
        distance_m -= length
    return len(path) - 1, 0.0


def write_additional(layout: Layout, geometry: LaneGeometry, path: Path) -> Path:
    """Write the layout as a SUMO additional file (outputs discarded: readings come via TraCI)."""
    lines = ["<additional>"]
    reach = max([d.distance_m for d in (*layout.loops, *layout.cameras)], default=0.0)
    for d in layout.loops:
        lanes = upstream_path(geometry, d.lane, reach)
        k, pos = _locate(lanes, d.distance_m)
        lines.append(
            f"    <inductionLoop id={quoteattr(d.id)} lane={quoteattr(lanes[k][0])}"
            f' pos="{pos:.2f}" period="86400" file="NUL" friendlyPos="true"/>'
        )
    for d in layout.cameras:
        lanes = upstream_path(geometry, d.lane, reach)
        k, pos = _locate(lanes, d.distance_m)
        span = " ".join(lane for lane, _ in reversed(lanes[: k + 1]))
        lines.append(
            f"    <laneAreaDetector id={quoteattr(d.id)} lanes={quoteattr(span)}"
            f' pos="{pos:.2f}" endPos="{lanes[0][1]:.2f}"'
            ' period="86400" file="NUL" friendlyPos="true"/>'
        )
    lines.append("</additional>")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
