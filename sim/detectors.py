"""Field-like detectors for every approach: a stop-line loop, an upstream loop and a camera zone.

The layout is pure data (``control.port.DetectorSpec``); this module places it on a SUMO net
and writes it as an additional file of E1 (induction loop) and E2 (lane area) detectors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

from citybrain.control.model import Intersection
from citybrain.control.port import DetectorKind, DetectorSpec, Layout

PREFIX = "cb"


@dataclass(frozen=True, slots=True)
class DetectorPlacement:
    stop_loop_m: float = 1.0
    """Stop-line loop: distance from the stop line to the loop."""
    upstream_loop_m: float = 60.0
    """Upstream loop: distance from the stop line (clamped to the lane)."""
    camera_m: float = 100.0
    """Camera zone length, ending at the stop line (clamped to the lane)."""


def build_layout(
    intersections: tuple[Intersection, ...],
    lane_length: Callable[[str], float],
    placement: DetectorPlacement | None = None,
) -> Layout:
    """Place detectors on every incoming lane of every intersection."""
    placement = placement or DetectorPlacement()
    loops: list[DetectorSpec] = []
    cameras: list[DetectorSpec] = []
    seen: set[str] = set()
    for x in intersections:
        for lane in x.in_lanes:
            if not lane or lane in seen:
                continue
            seen.add(lane)
            length = lane_length(lane)
            stop = min(placement.stop_loop_m, length / 2)
            upstream = max(stop, min(placement.upstream_loop_m, length - 0.5))
            camera = min(placement.camera_m, length)
            loops.append(
                DetectorSpec(f"{PREFIX}_s_{lane}", DetectorKind.STOP_LOOP, x.id, lane, stop)
            )
            loops.append(
                DetectorSpec(f"{PREFIX}_u_{lane}", DetectorKind.UPSTREAM_LOOP, x.id, lane, upstream)
            )
            cameras.append(
                DetectorSpec(f"{PREFIX}_c_{lane}", DetectorKind.CAMERA, x.id, lane, camera)
            )
    lengths = {lane: lane_length(lane) for lane in seen}
    return Layout(intersections, tuple(loops), tuple(cameras), lengths)


def write_additional(layout: Layout, lane_length: Callable[[str], float], path: Path) -> Path:
    """Write the layout as a SUMO additional file (outputs discarded: readings come via TraCI)."""
    lines = ["<additional>"]
    for d in layout.loops:
        pos = lane_length(d.lane) - d.distance_m
        lines.append(
            f'    <inductionLoop id={quoteattr(d.id)} lane={quoteattr(d.lane)} pos="{pos:.2f}"'
            ' period="86400" file="NUL" friendlyPos="true"/>'
        )
    for d in layout.cameras:
        length = lane_length(d.lane)
        lines.append(
            f"    <laneAreaDetector id={quoteattr(d.id)} lane={quoteattr(d.lane)}"
            f' pos="{length - d.distance_m:.2f}" endPos="{length:.2f}"'
            ' period="86400" file="NUL" friendlyPos="true"/>'
        )
    lines.append("</additional>")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
