"""Detector placement: every approach lane, reaching up short stubs of road."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from citybrain.control.port import DetectorKind
from citybrain.netmodel.layout import DetectorPlacement, build_layout, upstream_path
from citybrain.sim.detectors import write_additional

from .test_envelope import crossing


class Road:
    """in0 is a 1 m stub fed by a 40 m lane fed by a 200 m lane; the others are 300 m."""

    lengths: ClassVar[dict[str, float]] = {"in0": 1.0, "mid": 40.0, "far": 200.0}
    before: ClassVar[dict[str, str]] = {"in0": "mid", "mid": "far"}

    def length(self, lane: str) -> float:
        return self.lengths.get(lane, 300.0)

    def predecessor(self, lane: str) -> str | None:
        return self.before.get(lane)


def test_path_reaches_upstream_until_covered() -> None:
    assert upstream_path(Road(), "in0", 100.0) == [("in0", 1.0), ("mid", 40.0), ("far", 200.0)]
    assert upstream_path(Road(), "in1", 100.0) == [("in1", 300.0)]


def test_every_approach_gets_two_loops_and_a_camera() -> None:
    layout = build_layout((crossing(),), Road(), DetectorPlacement())
    assert len(layout.loops) == 8 and len(layout.cameras) == 4
    stub = {d.kind: d for d in (*layout.loops, *layout.cameras) if d.lane == "in0"}
    assert stub[DetectorKind.STOP_LOOP].distance_m == 0.5  # half the 1 m stub
    assert stub[DetectorKind.UPSTREAM_LOOP].distance_m == 60.0  # on the lane before the stub
    assert stub[DetectorKind.CAMERA].distance_m == 100.0
    assert layout.lane_length_m["in0"] == 241.0


def test_additional_file_places_detectors_on_the_upstream_lanes(tmp_path: Path) -> None:
    layout = build_layout((crossing(),), Road(), DetectorPlacement())
    text = write_additional(layout, Road(), tmp_path / "d.add.xml").read_text()
    assert '<inductionLoop id="cb_u_in0" lane="far" pos="181.00"' in text  # 60 - 1 - 40 = 19 m up
    assert '<laneAreaDetector id="cb_c_in0" lanes="far mid in0" pos="141.00" endPos="1.00"' in text
    assert '<inductionLoop id="cb_s_in1" lane="in1" pos="298.00"' in text
