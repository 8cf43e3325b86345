"""The escort in real SUMO: the arterial's ambulance, a short window around its trip."""

from __future__ import annotations

import itertools
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from citybrain.cli import main
from citybrain.control.corridor import EscortRequest
from citybrain.netmodel.corridors import NetCorridors
from citybrain.sim.runner import RunOptions, prepare, run

pytestmark = pytest.mark.sumo

MAIN_ROUTE = (
    "left0A0",
    "left0A0.200.00",
    "A0B0",
    "A0B0.200.00",
    "B0C0",
    "B0C0.200.00",
    "C0D0",
    "C0D0.200.00",
    "D0E0",
    "D0E0.200.00",
    "E0right0",
)


def test_corridor_from_the_net(arterial_cfg: Path) -> None:
    _, net, layout = prepare(arterial_cfg)
    corridor = NetCorridors(net, layout.intersections)(EscortRequest("amb", MAIN_ROUTE))
    assert [s.intersection for s in corridor.signals] == ["A0", "B0", "C0", "D0", "E0"]
    stops = [s.stop_m for s in corridor.signals]
    assert stops == sorted(stops)
    gaps = [b - a for a, b in itertools.pairwise(stops)]
    assert all(gap == pytest.approx(250.0, abs=5.0) for gap in gaps)
    x = {i.id: i for i in layout.intersections}["A0"]
    for sig in corridor.signals:
        (phase,) = sig.phases  # the main road's through phase, priority green on all links
        assert all(x.phases[phase].state[i] == "G" for i in sig.links)
        assert sig.exit_m > sig.stop_m
    assert corridor.length_m == pytest.approx(1495.0, abs=10.0)


def test_escorted_ambulance_in_sumo(arterial_cfg: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = main(
        [
            "sim",
            "run",
            str(arterial_cfg),
            "--controller",
            "adaptive",
            "--escort",
            "--end",
            "1990",
            "--out",
            str(out),
            "--seed",
            "2",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["escort"] == "corridor"
    (amb,) = metrics["emergency"]
    assert amb["completed"] and amb["escort"] == "corridor"
    assert amb["ran_red"] == 0
    assert amb["stops"] == 0
    assert amb["ratio_to_free_flow"] == pytest.approx(
        amb["travel_time_s"] / amb["free_flow_time_s"]
    )
    assert amb["ratio_to_free_flow"] <= 1.2
    assert amb["civilian_delay_no_escort_s"] is not None
    assert amb["civilian_delay_change"] == pytest.approx(
        amb["civilian_delay_s"] / amb["civilian_delay_no_escort_s"] - 1
    )
    # the ambulance obeys the signals: it carries no blue-light device
    trip = ET.parse(out / "tripinfo.xml").getroot().find("tripinfo[@id='ambulance']")
    assert trip is not None and "bluelight" not in trip.get("devices", "")
    record = json.loads((out / "escort-ambulance.json").read_text())
    assert len(record["passages"]) == 5 and all(p[2] in "Gg" for p in record["passages"])
    events = [e[2] for e in record["escort"]["events"]]
    assert events.count("preemption starts") >= 1
    assert (out / "timespace-ambulance.png").stat().st_size > 10_000
    assert (out / "baseline" / "metrics.json").is_file()


def test_short_window_begins_late(arterial_cfg: Path, tmp_path: Path) -> None:
    # a window that starts at the ambulance's departure, network empty: it is escorted alone
    result = run(
        arterial_cfg,
        tmp_path,
        RunOptions("plan", seed=1, begin_s=1795, end_s=1960, escort="local", escort_baseline=False),
    )
    (amb,) = result.metrics.emergency
    assert amb.completed and amb.ran_red == 0 and amb.civilian_delay_no_escort_s is None
    assert result.metrics.extra["window_s"] == [1795, 1960]
