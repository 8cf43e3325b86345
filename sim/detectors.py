"""Write citybrain's added detectors as a SUMO additional file of E1 and E2 detectors.

Where they sit is the layout's business (``citybrain.netmodel.layout``); this is only SUMO's
file format for them.
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import quoteattr

from citybrain.control.port import Layout
from citybrain.netmodel.layout import LaneGeometry, upstream_path


def _locate(path: list[tuple[str, float]], distance_m: float) -> tuple[int, float]:
    """Which lane of the path lies ``distance_m`` before the stop line, and the offset on it."""
    for k, (_, length) in enumerate(path):
        if distance_m <= length or k == len(path) - 1:
            return k, max(length - distance_m, 0.0)
        distance_m -= length
    return len(path) - 1, 0.0


def write_additional(
    layout: Layout, geometry: LaneGeometry, path: Path, skip: frozenset[str] = frozenset()
) -> Path:
    """Write the layout as a SUMO additional file (outputs discarded: readings come via TraCI).

    ``skip``: ids of detectors the scenario itself defines (they are loaded from its files).
    """
    lines = ["<additional>"]
    reach = max([d.distance_m for d in (*layout.loops, *layout.cameras)], default=0.0)
    for d in layout.loops:
        if d.id in skip:
            continue
        lanes = upstream_path(geometry, d.lane, reach)
        k, pos = _locate(lanes, d.distance_m)
        lines.append(
            f"    <inductionLoop id={quoteattr(d.id)} lane={quoteattr(lanes[k][0])}"
            f' pos="{pos:.2f}" period="86400" file="NUL" friendlyPos="true"/>'
        )
    for d in layout.cameras:
        if d.id in skip:
            continue
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
