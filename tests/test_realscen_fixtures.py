"""The real-city-like fixtures of tests/realscen.py run in plain SUMO and hold what they claim."""

from __future__ import annotations

import gzip
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import sumolib

from . import realscen
from .realscen import (
    BUILDERS,
    CLUSTER_NODES,
    CLUSTER_TLS_ID,
    EMERGENCY_VEHICLE,
    EMERGENCY_VTYPE,
    PERSON_COUNT,
    TLS_ID,
    WAUT_SWITCH,
    sumo_env,
)

pytestmark = pytest.mark.sumo

PLAIN = ("--seed", "1", "--time-to-teleport", "-1", "--no-step-log", "true")


def sumo(cfg: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``sumo -c CFG`` plus the plain options and ``extra``, run outside the scenario folder."""
    return subprocess.run(
        [sumolib.checkBinary("sumo"), "-c", str(cfg), *PLAIN, *extra],
        cwd=cfg.parent.parent,
        env=sumo_env(),
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )


def config_value(cfg: Path, key: str) -> str | None:
    node = ET.parse(cfg).getroot().find(f"*/{key}")
    return None if node is None else node.get("value")


def additional_files(cfg: Path) -> list[Path]:
    value = config_value(cfg, "additional-files") or ""
    return [cfg.parent / name for name in value.split(",") if name]


def programs(path: Path, tls_id: str) -> dict[str, list[ET.Element]]:
    """programID -> phases of the ``tlLogic``s of ``tls_id`` in a net or additional file."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        root = ET.parse(f).getroot()
    return {
        logic.get("programID", ""): logic.findall("phase")
        for logic in root.iter("tlLogic")
        if logic.get("id") == tls_id
    }


def cycle(phases: list[ET.Element]) -> float:
    return sum(float(p.get("duration", "0")) for p in phases)


def programs_run(cfg: Path, tmp_path: Path, tls_id: str = TLS_ID) -> list[tuple[float, str]]:
    """(time, programID) of every signal switch of ``tls_id`` in a run of ``cfg``."""
    probe = tmp_path / "probe.add.xml"
    switches = tmp_path / "switches.xml"
    probe.write_text(
        f'<additional><timedEvent type="SaveTLSSwitchStates" source="{tls_id}" '
        f'dest="{switches}"/></additional>\n'
    )
    files = [*additional_files(cfg), probe]
    sumo(cfg, "--additional-files", ",".join(str(f) for f in files))
    return [
        (float(s.get("time", "nan")), s.get("programID", ""))
        for s in ET.parse(switches).getroot().iter("tlsState")
    ]


def statistics(cfg: Path, tmp_path: Path, *extra: str) -> ET.Element:
    """Run ``cfg`` plainly and return its ``--statistic-output``."""
    out = tmp_path / "statistics.xml"
    sumo(cfg, "--statistic-output", str(out), *extra)
    return ET.parse(out).getroot()


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_runs_and_everyone_arrives(name: str, tmp_path: Path) -> None:
    cfg = BUILDERS[name](tmp_path / name)
    assert cfg.is_file()
    assert cfg.suffix == ".sumocfg"
    assert cfg.parent == tmp_path / name
    stats = statistics(cfg, tmp_path)
    vehicles = stats.find("vehicles")
    assert vehicles is not None
    assert int(vehicles.get("loaded", "0")) >= 200
    assert vehicles.get("inserted") == vehicles.get("loaded")
    assert vehicles.get("running") == "0"
    assert vehicles.get("waiting") == "0"
    teleports = stats.find("teleports")
    assert teleports is not None
    assert teleports.get("total") == "0"


def test_builders_are_repeatable(tmp_path: Path) -> None:
    for name, build in BUILDERS.items():
        a = build(tmp_path / "a" / name)
        b = build(tmp_path / "b" / name)
        for file in sorted(a.parent.iterdir()):
            if ".net.xml" in file.name:
                continue  # a net heads with the time netconvert built it
            other = b.parent / file.name
            if file.name.endswith(".gz"):
                assert gzip.decompress(file.read_bytes()) == gzip.decompress(other.read_bytes())
            else:
                assert file.read_bytes() == other.read_bytes(), file.name


def test_additional_program_is_loaded_last_and_runs(tmp_path: Path) -> None:
    cfg = realscen.build_additional_program(tmp_path / "scen")
    net = cfg.parent / (config_value(cfg, "net-file") or "")
    (add,) = additional_files(cfg)
    in_net = programs(net, TLS_ID)
    in_add = programs(add, TLS_ID)
    assert list(in_net) == ["0"]
    assert list(in_add) == ["city"]
    city = in_add["city"]
    assert cycle(city) == 90
    assert [p.get("duration") for p in city][:3] == ["36", "4", "2"]
    assert [p.get("duration") for p in city] != [p.get("duration") for p in in_net["0"]]
    all_red = [p for p in city if set(p.get("state", "")) == {"r"}]
    assert all_red == city[2::3]  # after every yellow; the net's own program has none
    assert not any(set(p.get("state", "")) == {"r"} for p in in_net["0"])

    trips = tmp_path / "tripinfo.xml"
    sumo(cfg, "--tripinfo-output", str(trips))
    assert len(ET.parse(trips).getroot().findall("tripinfo")) >= 200
    assert {program for _, program in programs_run(cfg, tmp_path)} == {"city"}


def test_waut_switches_from_day_to_night(tmp_path: Path) -> None:
    cfg = realscen.build_waut(tmp_path / "scen")
    (add,) = additional_files(cfg)
    assert set(programs(add, TLS_ID)) == {"day", "night"}
    root = ET.parse(add).getroot()
    waut = root.find("WAUT")
    assert waut is not None
    assert waut.get("startProg") == "day"
    assert waut.get("refTime") == "0"
    switch = waut.find("wautSwitch")
    assert switch is not None
    assert switch.get("to") == "night"
    begin = float(config_value(cfg, "begin") or "nan")
    end = float(config_value(cfg, "end") or "nan")
    assert begin < float(switch.get("time", "nan")) == WAUT_SWITCH < end
    junction = root.find("wautJunction")
    assert junction is not None
    assert (junction.get("wautID"), junction.get("junctionID")) == (waut.get("id"), TLS_ID)

    run = programs_run(cfg, tmp_path)
    assert {p for t, p in run if t < WAUT_SWITCH} == {"day"}
    assert {p for t, p in run if t >= WAUT_SWITCH} == {"night"}


def test_gz_files_hold_an_emergency_vehicle(tmp_path: Path) -> None:
    cfg = realscen.build_gz(tmp_path / "scen")
    net = cfg.parent / (config_value(cfg, "net-file") or "")
    routes = cfg.parent / (config_value(cfg, "route-files") or "")
    assert net.name.endswith(".net.xml.gz")
    assert routes.name.endswith(".rou.xml.gz")
    for path in (net, routes):
        assert path.read_bytes()[:2] == b"\x1f\x8b"  # gzip magic
    assert sumolib.net.readNet(str(net)).getTLSSecure(TLS_ID) is not None
    with gzip.open(routes, "rb") as f:
        root = ET.parse(f).getroot()
    vtypes = {t.get("id"): t.get("vClass") for t in root.iter("vType")}
    assert vtypes[EMERGENCY_VTYPE] == "emergency"
    (ambulance,) = [v for v in root.iter("vehicle") if v.get("type") == EMERGENCY_VTYPE]
    assert ambulance.get("id") == EMERGENCY_VEHICLE

    trips = tmp_path / "tripinfo.xml"
    sumo(cfg, "--tripinfo-output", str(trips))
    arrived = {t.get("id"): t.get("vType") for t in ET.parse(trips).getroot().iter("tripinfo")}
    assert arrived[EMERGENCY_VEHICLE] == EMERGENCY_VTYPE


def test_outputs_scenario_writes_the_city_outputs(tmp_path: Path) -> None:
    cfg = realscen.build_outputs(tmp_path / "scen")
    folder = cfg.parent
    assert config_value(cfg, "begin") == "0:00:00"
    assert config_value(cfg, "end") == "0:15:00"
    assert config_value(cfg, "log") == "sim.log.txt"
    assert config_value(cfg, "verbose") == "true"
    assert config_value(cfg, "duration-log.statistics") == "true"
    assert config_value(cfg, "summary-output") == "summary.xml"
    (add,) = additional_files(cfg)
    root = ET.parse(add).getroot()
    net = sumolib.net.readNet(str(folder / (config_value(cfg, "net-file") or "")))
    node = net.getNode(TLS_ID)
    incoming = {lane.getID() for edge in node.getIncoming() for lane in edge.getLanes()}
    assert len(incoming) == 8
    e1 = {d.get("id"): d for d in root.iter("inductionLoop")}
    e2 = {d.get("id"): d for d in root.iter("laneAreaDetector")}
    assert set(e1) == {f"city_e1_{lane}" for lane in incoming}
    assert set(e2) == {f"city_e2_{lane}" for lane in incoming}
    for det in e1.values():
        length = net.getLane(det.get("lane")).getLength()
        assert 0 < length - float(det.get("pos", "nan")) < 10
        assert det.get("file") == "det_e1.xml"
        assert det.get("period") == "60"
    for det in e2.values():
        length = net.getLane(det.get("lane")).getLength()
        assert length - float(det.get("endPos", "nan")) < 0.01
        assert float(det.get("pos", "nan")) < float(det.get("endPos", "nan"))
        assert det.get("file") == "det_e2.xml"
    edge_data = root.find("edgeData")
    assert edge_data is not None
    assert (edge_data.get("id"), edge_data.get("file")) == ("ed", "edgedata.xml")

    sumo(cfg)
    for name in ("det_e1.xml", "det_e2.xml", "edgedata.xml", "summary.xml", "sim.log.txt"):
        assert (folder / name).is_file(), name
    written = {i.get("id") for i in ET.parse(folder / "det_e1.xml").getroot().iter("interval")}
    assert written == set(e1)
    assert "Simulation ended at time: 900" in (folder / "sim.log.txt").read_text()


def test_no_end_runs_until_the_demand_is_served(tmp_path: Path) -> None:
    cfg = realscen.build_no_end(tmp_path / "scen")
    assert config_value(cfg, "end") is None
    assert config_value(cfg, "begin") == "0"
    performance = statistics(cfg, tmp_path).find("performance")
    assert performance is not None
    assert realscen.NO_END_DEMAND_END < float(performance.get("end", "nan")) < 900


def test_cluster_one_program_controls_both_junctions(tmp_path: Path) -> None:
    cfg = realscen.build_cluster(tmp_path / "scen")
    net_file = cfg.parent / (config_value(cfg, "net-file") or "")
    root = ET.parse(net_file).getroot()
    logics = root.findall("tlLogic")
    assert [logic.get("id") for logic in logics] == [CLUSTER_TLS_ID]
    to_node = {e.get("id"): e.get("to") for e in root.iter("edge") if e.get("function") is None}
    controlled = {to_node[c.get("from")] for c in root.iter("connection") if c.get("tl")}
    assert controlled == set(CLUSTER_NODES)
    junctions = {j.get("id"): j.get("type") for j in root.iter("junction")}
    assert all(junctions[node] == "traffic_light" for node in CLUSTER_NODES)
    net = sumolib.net.readNet(str(net_file))
    a, b = (net.getNode(node).getCoord() for node in CLUSTER_NODES)
    assert 15 < sumolib.geomhelper.distance(a, b) < 25


def test_crossing_has_pedestrian_crossings_a_bus_lane_and_walkers(tmp_path: Path) -> None:
    cfg = realscen.build_crossing(tmp_path / "scen")
    root = ET.parse(cfg.parent / (config_value(cfg, "net-file") or "")).getroot()
    crossings = [e.get("id", "") for e in root.iter("edge") if e.get("function") == "crossing"]
    assert len(crossings) == 4
    assert any(e.get("function") == "walkingarea" for e in root.iter("edge"))
    signalled = {c.get("to") for c in root.iter("connection") if c.get("tl") == TLS_ID}
    assert set(crossings) <= signalled
    allowed = {lane.get("id"): lane.get("allow") for lane in root.iter("lane")}
    assert allowed["west_in_0"] == "pedestrian"
    assert allowed["west_in_1"] == "bus"
    assert allowed["north_in_1"] == "bicycle"

    trips = tmp_path / "tripinfo.xml"
    sumo(cfg, "--tripinfo-output", str(trips))
    out = ET.parse(trips).getroot()
    assert len(out.findall("personinfo")) == PERSON_COUNT
    vtypes = [t.get("vType") for t in out.iter("tripinfo")]
    assert vtypes.count("bus") >= 4
    assert vtypes.count("bike") >= 4
