"""RESCO's average delay on a small hand-made tripinfo, checked by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from citybrain.sim.metrics import emergency_types, summarize

TRIPINFO = """<tripinfos>
  <tripinfo id="a" depart="0.00" departDelay="2.00" arrival="100.00" duration="100.00"
            waitingTime="10.00" waitingCount="1" timeLoss="20.00" vType="car"/>
  <tripinfo id="b" depart="5.00" departDelay="0.00" arrival="65.00" duration="60.00"
            waitingTime="0.00" waitingCount="0" timeLoss="4.00" vType="amb"/>
  <tripinfo id="c" depart="50.00" departDelay="6.00" arrival="-1.00" duration="50.00"
            waitingTime="30.00" waitingCount="3" timeLoss="40.00" vType="car" vaporized="end"/>
</tripinfos>
"""
STATISTICS = """<statistics>
  <vehicles loaded="5" inserted="3" running="1" waiting="2"/>
  <vehicleTripStatistics count="3" departDelayWaiting="15.00"/>
</statistics>
"""


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    trip, stat = tmp_path / "tripinfo.xml", tmp_path / "statistics.xml"
    trip.write_text(TRIPINFO)
    stat.write_text(STATISTICS)
    return trip, stat


def test_delay_counts_unfinished_and_never_departed(files: tuple[Path, Path]) -> None:
    s = summarize(*files, window_s=3600, emergency_types={"amb"}, free_flow_s={"b": 50.0})
    # (20+2) + (4+0) + (40+6) = 72 from tripinfo, plus 2 never-departed x 15 s = 30, over 5.
    assert s.mean_delay_s == pytest.approx(102 / 5)
    assert (s.completed, s.unfinished, s.never_departed) == (2, 1, 2)
    assert s.mean_travel_time_s == pytest.approx(210 / 3)
    assert s.mean_waiting_time_s == pytest.approx(40 / 3)
    assert s.throughput_veh_per_h == pytest.approx(2.0)
    (amb,) = s.emergency
    assert (amb.id, amb.travel_time_s, amb.free_flow_time_s, amb.stops) == ("b", 60.0, 50.0, 0)


def test_emergency_types_are_read_from_route_files(tmp_path: Path) -> None:
    rou = tmp_path / "r.rou.xml"
    rou.write_text('<routes><vType id="amb" vClass="emergency"/><vType id="car"/></routes>')
    assert emergency_types([rou]) == {"amb"}


def test_missing_output_is_a_clear_error(tmp_path: Path) -> None:
    from citybrain.errors import ScenarioError

    with pytest.raises(ScenarioError, match=r"tripinfo\.xml"):
        summarize(tmp_path / "tripinfo.xml", tmp_path / "statistics.xml", window_s=1)
