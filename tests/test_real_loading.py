"""Scenarios loaded as SUMO loads them: each case of a published scenario, on small ones built."""

from __future__ import annotations

import gzip
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from citybrain.control.model import PlanStep
from citybrain.control.port import DetectorKind
from citybrain.errors import ScenarioError
from citybrain.netmodel.layout import (
    CityDetector,
    CityDetectorKind,
    DetectorPlacement,
    DetectorSource,
    city_detectors,
)
from citybrain.settings import Settings
from citybrain.sim.loaded import LoadedProgram, LoadedSignal
from citybrain.sim.loading import resolve_area_ends
from citybrain.sim.plain import run_plain
from citybrain.sim.runner import RunOptions, load, run
from citybrain.sim.scenario import Scenario, load_scenario

from . import realscen
from .byhand import plain_sumo_delay
from .conftest import real_config

pytestmark = pytest.mark.sumo


def raw_sumo_delay(cfg: Path, seed: int, work: Path) -> float:
    """RESCO delay of the ``sumo`` binary run by hand on a writable copy of the scenario."""
    copy = work / "copy"
    shutil.copytree(cfg.parent, copy)
    return plain_sumo_delay(copy / cfg.name, seed, work)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("real")
    return {name: build(base / name) for name, build in realscen.BUILDERS.items()}


@pytest.mark.parametrize("name", list(realscen.BUILDERS))
def test_fixed_is_the_scenarios_own_plan(built: dict[str, Path], name: str, tmp_path: Path) -> None:
    cfg = built[name]
    before = snapshot(cfg.parent)
    result = run(cfg, tmp_path / "fixed", RunOptions("fixed", seed=3))
    assert result.signal_writes == 0
    assert result.metrics.vehicles.completed > 0
    assert snapshot(cfg.parent) == before  # the scenario folder is never written to
    by_hand = raw_sumo_delay(cfg, 3, tmp_path / "by-hand")
    assert result.metrics.mean_delay_s == pytest.approx(by_hand, rel=0.01)
    plain = run_plain(cfg, tmp_path / "plain", 3)
    assert plain.mean_delay_s == pytest.approx(by_hand, rel=0.01)


@pytest.mark.parametrize("name", list(realscen.BUILDERS))
def test_adaptive_runs_within_the_envelope(
    built: dict[str, Path], name: str, tmp_path: Path
) -> None:
    cfg = built[name]
    before = snapshot(cfg.parent)
    result = run(cfg, tmp_path / "adaptive", RunOptions("adaptive", seed=1))  # fails on violation
    assert result.signal_writes > 0
    assert result.metrics.vehicles.completed > 0
    assert "monitor_findings" not in result.metrics.extra
    assert result.metrics.extra["standing_at_end"] == 0  # nothing gridlocked
    assert result.metrics.extra["decision_ms_per_intersection"]["p99"] < 50  # recorded, sane
    assert snapshot(cfg.parent) == before


def test_the_program_from_an_additional_file_is_modelled(built: dict[str, Path]) -> None:
    cfg = built["additional_program"]
    ready = load(cfg)
    (x,) = ready.layout.intersections
    signal = ready.loaded.signals[realscen.TLS_ID]
    assert signal.active == "city" and set(signal.programs) == {"0", "city"}
    assert x.plan == signal.programs["city"].steps
    assert x.cycle_s == 90
    assert x.all_red_s == realscen.ALL_RED and x.yellow_s == realscen.YELLOW


def test_a_waut_is_followed_and_left_out_under_a_controller(
    built: dict[str, Path], tmp_path: Path
) -> None:
    cfg = built["waut"]
    ready = load(cfg)
    (x,) = ready.layout.intersections
    assert ready.loaded.signals[realscen.TLS_ID].active == "day"
    assert x.plan == ready.loaded.signals[realscen.TLS_ID].programs["day"].steps
    night = ready.model_of(realscen.TLS_ID, "night")
    assert night is not None and night.cycle_s == 60
    fixed = run(cfg, tmp_path / "fixed", RunOptions("fixed", seed=1, timeline=True))
    timeline = json.loads((tmp_path / "fixed" / "timeline.json").read_text())[realscen.TLS_ID]
    night_states = {s.state for s in night.plan}
    day_states = {s.state for s in x.plan}
    after = {state for t, state in timeline if t >= realscen.WAUT_SWITCH + 60}
    assert after <= night_states and not after <= day_states
    assert fixed.metrics.extra["monitor_findings"]["total"] == 0
    run(cfg, tmp_path / "adaptive", RunOptions("adaptive", seed=1))
    (copy,) = (tmp_path / "adaptive" / "scenario-inputs").iterdir()
    tags = {e.tag for e in ET.parse(copy).getroot().iter()}
    assert "WAUT" not in tags and "tlLogic" in tags


def test_gzipped_files_and_their_emergency_vehicle(built: dict[str, Path], tmp_path: Path) -> None:
    cfg = built["gz"]
    assert cfg.parent.joinpath("gz.rou.xml.gz").is_file()
    result = run(
        cfg, tmp_path, RunOptions("adaptive", seed=1, escort="corridor", escort_baseline=False)
    )
    (amb,) = result.metrics.emergency
    assert amb.id == "ambulance_1" and amb.completed and amb.free_flow_time_s
    assert amb.ran_red == 0


def test_outputs_go_to_the_run_folder(built: dict[str, Path], tmp_path: Path) -> None:
    cfg = built["outputs"]
    scenario = load_scenario(cfg)
    assert (scenario.begin_s, scenario.end_s) == (0, 900)  # written as 0:00:00 and 0:15:00
    run(cfg, tmp_path, RunOptions("adaptive", seed=1))
    written = {p.name for p in (tmp_path / "scenario-outputs").iterdir()}
    assert {"sim.log.txt", "summary.xml", "det_e1.xml", "det_e2.xml", "edgedata.xml"} <= written
    assert not any((cfg.parent / n).exists() for n in written)


def test_the_citys_detectors_serve_their_approaches(built: dict[str, Path], tmp_path: Path) -> None:
    cfg = built["outputs"]
    ready = load(cfg)
    city = ready.city_detectors
    assert len(city) == 16
    loops = {d.id: d for d in ready.layout.loops}
    cams = {d.id: d for d in ready.layout.cameras}
    for lane in ready.layout.intersections[0].in_lanes:
        stop = loops[f"city_e1_{lane}"]
        assert stop.kind is DetectorKind.STOP_LOOP and stop.lane == lane
        assert stop.distance_m == pytest.approx(5.0)
        assert cams[f"city_e2_{lane}"].distance_m == pytest.approx(40.0)
        assert loops[f"cb_u_{lane}"].kind is DetectorKind.UPSTREAM_LOOP  # the missing one
        assert f"cb_s_{lane}" not in loops and f"cb_c_{lane}" not in cams
    result = run(cfg, tmp_path / "both", RunOptions("adaptive", seed=1))
    used = result.metrics.extra["detectors"]
    assert len(used["city"]) == 16 and all(d.startswith("cb_u_") for d in used["added"])
    added = (tmp_path / "both" / "detectors.add.xml").read_text()
    assert "city_e1" not in added and "cb_u_" in added

    def only(source: DetectorSource) -> Settings:
        return Settings(detectors=DetectorPlacement(source=source))

    city_only = load(cfg, only(DetectorSource.CITY).detectors).layout
    assert {d.id for d in (*city_only.loops, *city_only.cameras)} == set(city)
    added_only = load(cfg, only(DetectorSource.ADDED).detectors).layout
    assert not {d.id for d in (*added_only.loops, *added_only.cameras)} & city
    result = run(
        cfg, tmp_path / "city", RunOptions("adaptive", seed=1, settings=only(DetectorSource.CITY))
    )
    assert result.metrics.extra["detectors"]["added"] == []
    fixed = run(cfg, tmp_path / "fixed", RunOptions("fixed", seed=1)).metrics.mean_delay_s
    assert result.metrics.mean_delay_s < fixed  # it read something real from the city's loops


def test_a_scenario_without_end_runs_until_every_vehicle_left(
    built: dict[str, Path], tmp_path: Path
) -> None:
    cfg = built["no_end"]
    scenario = load_scenario(cfg)
    assert not scenario.end_given and "until every vehicle has left" in scenario.window_note
    result = run(cfg, tmp_path, RunOptions("fixed", seed=1))
    _, end = result.metrics.extra["window_s"]
    assert realscen.NO_END_DEMAND_END < end < 2 * realscen.NO_END_DEMAND_END
    assert result.metrics.vehicles.unfinished == 0 and result.metrics.vehicles.completed > 0


def test_a_cluster_is_one_intersection(built: dict[str, Path]) -> None:
    ready = load(built["cluster"])
    (x,) = ready.layout.intersections
    assert x.id == realscen.CLUSTER_TLS_ID
    junctions = {ready.net.getLane(lane).getEdge().getToNode().getID() for lane in x.in_lanes}
    assert len(junctions) == 2


def test_a_crossing_gets_no_detectors_and_its_findings_are_reported(
    built: dict[str, Path], tmp_path: Path
) -> None:
    ready = load(built["crossing"])
    (x,) = ready.layout.intersections
    crossings = [link for link in x.links if not link.in_lane]  # pedestrians' links
    assert len(crossings) == 4 and len(x.links) == 30
    for link in crossings:  # read with the junction's internal lanes: they have their foes
        assert x.conflicts[link.index]
    assert all(
        d.lane and not d.lane.startswith(":") for d in (*ready.layout.loops, *ready.layout.cameras)
    )
    result = run(built["crossing"], tmp_path, RunOptions("fixed", seed=1))
    findings = result.metrics.extra["monitor_findings"]
    # netconvert's program takes the crossings from green straight to red: the city's own
    # program breaks that rule, which is reported and does not fail the run
    assert findings["by_rule"].get("green_to_red", 0) > 0
    assert {f["signal"] for f in findings["first"]} == {realscen.TLS_ID}


def test_unsupported_options_fail_in_one_line(tmp_path: Path, built: dict[str, Path]) -> None:
    src = built["additional_program"]
    for option, value, words in (
        ("step-length", "0.5", "step-length 0.5 s is not supported"),
        ("mesosim", "true", "mesosim is set"),
        ("remote-port", "8813", "remote-port is set"),
    ):
        folder = tmp_path / option
        shutil.copytree(src.parent, folder)
        cfg = folder / src.name
        root = ET.parse(cfg).getroot()
        ET.SubElement(root, option, {"value": value})
        ET.ElementTree(root).write(cfg)
        with pytest.raises(ScenarioError, match=words) as err:
            load_scenario(cfg)
        assert "\n" not in str(err.value)


def test_hamburg_fixed_is_plain_sumo(tmp_path: Path) -> None:
    cfg = real_config("hamburg-tavf")
    result = run(cfg, tmp_path / "fixed", RunOptions("fixed", seed=1))
    plain = run_plain(cfg, tmp_path / "plain", 1)
    assert result.signal_writes == 0
    assert result.metrics.mean_delay_s == pytest.approx(plain.mean_delay_s, rel=0.01)
    assert (tmp_path / "fixed" / "scenario-outputs" / "simulation.log.txt").is_file()
    assert result.metrics.extra["programs"]["types"]["actuated"] >= 30


# ------------------------------------------------------------------ cases a review turned up


def copy_scenario(src: Path, dest: Path) -> Path:
    """A copy of a built scenario's folder; the copy's configuration."""
    shutil.copytree(src.parent, dest)
    return dest / src.name


def set_options(cfg: Path, options: dict[str, str]) -> None:
    """Add options (by SUMO's names) to a configuration."""
    root = ET.parse(cfg).getroot()
    for key, value in options.items():
        ET.SubElement(root, key, {"value": value})
    ET.ElementTree(root).write(cfg)


def add_file(cfg: Path, name: str, body: str) -> None:
    """Write an additional file beside ``cfg`` and list it in the configuration."""
    (cfg.parent / name).write_text(f"<additional>\n{body}\n</additional>\n")
    root = ET.parse(cfg).getroot()
    found = root.find(".//additional-files")
    if found is None:
        inputs = root.find("input")
        assert inputs is not None
        found = ET.SubElement(inputs, "additional-files", {"value": name})
    else:
        found.set("value", f"{found.get('value')},{name}")
    ET.ElementTree(root).write(cfg)


def test_sumo_actuated_is_not_switched_by_the_citys_waut(
    built: dict[str, Path], tmp_path: Path
) -> None:
    result = run(built["waut"], tmp_path, RunOptions("sumo-actuated", seed=1, timeline=True))
    (copy,) = (tmp_path / "scenario-inputs").iterdir()
    assert "WAUT" not in {e.tag for e in ET.parse(copy).getroot().iter()}
    night = load(built["waut"]).model_of(realscen.TLS_ID, "night")
    assert night is not None
    shown = json.loads((tmp_path / "timeline.json").read_text())[realscen.TLS_ID]
    after = {state for t, state in shown if t >= realscen.WAUT_SWITCH}
    assert not after & {p.state for p in night.phases}  # SUMO's actuated logic, not "night"
    assert result.metrics.vehicles.completed > 0


def test_plan_follows_the_program_the_waut_started_with_zero_writes(
    built: dict[str, Path], tmp_path: Path
) -> None:
    # the run leaves the WAUT out; the signal is set to the WAUT's start program instead
    assert run(built["waut"], tmp_path / "w", RunOptions("plan", seed=1)).signal_writes == 0
    cfg = built["additional_program"]
    assert run(cfg, tmp_path / "a", RunOptions("plan", seed=1)).signal_writes == 0


def test_inputs_named_by_additional_files_stay_inputs(
    built: dict[str, Path], tmp_path: Path
) -> None:
    cfg = copy_scenario(built["outputs"], tmp_path / "scenario")
    (cfg.parent / "vss_steps.xml").write_text(
        '<variableSpeedSign><step time="0" speed="8"/></variableSpeedSign>\n'
    )
    (cfg.parent / "sub").mkdir()
    (cfg.parent / "sub" / "inc.add.xml").write_text(
        '<additional><edgeData id="inc" file="inc_edgedata.xml"/></additional>\n'
    )
    add_file(
        cfg,
        "more.add.xml",
        '<variableSpeedSign id="vss" lanes="west_in_0" file="vss_steps.xml"/>\n'
        '<include href="sub/inc.add.xml"/>',
    )
    before = snapshot(cfg.parent)
    result = run(cfg, tmp_path / "run", RunOptions("fixed", seed=1))
    assert snapshot(cfg.parent) == before
    assert (tmp_path / "run" / "scenario-outputs" / "inc_edgedata.xml").is_file()
    assert result.metrics.mean_delay_s == pytest.approx(
        raw_sumo_delay(cfg, 1, tmp_path / "by-hand"), rel=0.01
    )


def test_saved_states_go_to_the_run_folder_and_a_failing_output_is_one_line(
    built: dict[str, Path], tmp_path: Path
) -> None:
    cfg = copy_scenario(built["additional_program"], tmp_path / "scenario")
    set_options(cfg, {"save-state.times": "100"})
    before = snapshot(cfg.parent)
    run(cfg, tmp_path / "run", RunOptions("fixed", seed=1, end_s=200))
    assert snapshot(cfg.parent) == before
    assert list((tmp_path / "run" / "scenario-outputs").glob("state_100*"))
    blocked = tmp_path / "blocked" / "scenario-outputs" / "state_100.00.xml.gz"
    blocked.mkdir(parents=True)  # SUMO cannot write its state there, 100 s into the run
    with pytest.raises(ScenarioError, match="SUMO stopped") as err:
        run(cfg, tmp_path / "blocked", RunOptions("fixed", seed=1, end_s=200))
    assert "\n" not in str(err.value)


def test_an_emergency_type_in_an_additional_file(built: dict[str, Path], tmp_path: Path) -> None:
    cfg = copy_scenario(built["gz"], tmp_path / "scenario")
    routes = cfg.parent / "gz.rou.xml.gz"
    text = gzip.decompress(routes.read_bytes()).decode()
    line = next(t for t in text.splitlines() if 'vClass="emergency"' in t)
    routes.write_bytes(gzip.compress(text.replace(line, "").encode()))
    add_file(cfg, "types.add.xml", line)
    result = run(cfg, tmp_path / "run", RunOptions("fixed", seed=1))
    (amb,) = result.metrics.emergency
    assert amb.completed and amb.free_flow_time_s and amb.free_flow_time_s < amb.travel_time_s + 1


def test_detectors_are_not_reported_for_a_controller_that_reads_none(
    built: dict[str, Path], tmp_path: Path
) -> None:
    result = run(built["outputs"], tmp_path, RunOptions("fixed", seed=1, end_s=60))
    assert result.metrics.extra["detectors"] == {"source": "both", "read": False}


def test_one_traci_client_is_what_sumo_has_anyway(built: dict[str, Path], tmp_path: Path) -> None:
    cfg = copy_scenario(built["additional_program"], tmp_path / "scenario")
    set_options(cfg, {"num-clients": "1"})
    assert load_scenario(cfg).options["num-clients"] == "1"


def test_offset_of_an_actuated_step_running_past_its_duration() -> None:
    steps = (PlanStep("Gr", 30), PlanStep("yr", 3), PlanStep("rG", 30), PlanStep("ry", 3))
    signal = LoadedSignal("s", "0", {"0": LoadedProgram("0", "actuated", steps)}, 0, 40.0)
    assert signal.offset_s(1000.0) == pytest.approx(1000.0 % 66)  # at the step's start
    later = LoadedSignal("s", "0", {"0": LoadedProgram("0", "static", steps)}, 2, 10.0)
    assert later.offset_s(1000.0) == pytest.approx((1000.0 - 53) % 66)  # 33 + 20 s into it


def test_an_area_detector_serves_as_camera_only_when_it_ends_at_the_stop_line() -> None:
    path = [("in_0", 100.0), ("up_0", 200.0)]
    area = CityDetectorKind.AREA
    found = [
        CityDetector("long", area, "in_0", 99.0, 150.0),  # over two lanes, ends 1 m short
        CityDetector("short", area, "in_0", 98.0, 40.0),
        CityDetector("away", area, "in_0", 60.0, 40.0),  # ends 40 m before the line
        CityDetector("elsewhere", area, "up_0", 200.0, 80.0),  # ends on another lane
    ]
    roles = city_detectors("x", path, found, 60.0)
    assert roles[DetectorKind.CAMERA].id == "long"
    assert roles[DetectorKind.CAMERA].distance_m == pytest.approx(151.0)
    assert set(roles) == {DetectorKind.CAMERA}


def test_a_multilane_area_detector_ends_where_its_definition_says(tmp_path: Path) -> None:
    (tmp_path / "d.add.xml").write_text(
        '<additional><laneAreaDetector id="m" lanes="up_0 in_0" pos="150" endPos="-2" '
        'period="60" file="NUL"/></additional>\n'
    )

    class Lane:
        def getLength(self) -> float:
            return 100.0

    class Net:
        def getLane(self, lane: str) -> Lane:
            assert lane == "in_0"
            return Lane()

    scenario = Scenario(
        tmp_path / "x.sumocfg", tmp_path / "n", (), (tmp_path / "d.add.xml",), 0, 10, 1
    )
    # TraCI reports the last lane, and the start position on the first lane (+ length)
    raw = CityDetector("m", CityDetectorKind.AREA, "in_0", 150.0 + 148.0, 148.0)
    (fixed,) = resolve_area_ends(scenario, (raw,), Net())
    assert (fixed.lane, fixed.pos_m, fixed.length_m) == ("in_0", 98.0, 148.0)
