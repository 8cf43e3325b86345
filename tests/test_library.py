"""The built-in scenario library: specs, nets, demand, and a short real SUMO run of each."""

from __future__ import annotations

import importlib.resources
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import pytest
import sumolib

from citybrain.errors import ConfigError, ScenarioError
from citybrain.sim import library
from citybrain.sim.library import SCENARIOS, ScenarioSpec, build_scenario, load_spec

EXPECTED_SIGNALS = {"single": 1, "arterial": 5, "grid": 9}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every packaged scenario, built once for the module."""
    root = tmp_path_factory.mktemp("scenarios")
    return {name: build_scenario(load_spec(name), root / name) for name in SCENARIOS}


def _packaged_text(name: str) -> str:
    resource = importlib.resources.files("citybrain.configs") / "scenarios" / f"{name}.toml"
    return resource.read_text(encoding="utf-8")


def _routes(cfg: Path) -> ET.Element:
    return ET.parse(cfg.with_name(cfg.name.replace(".sumocfg", ".rou.xml"))).getroot()


def test_scenario_names_match_packaged_files() -> None:
    assert SCENARIOS == ("single", "arterial", "grid")
    for name in SCENARIOS:
        spec = load_spec(name)
        assert isinstance(spec, ScenarioSpec)
        assert spec.name == name
        assert spec.net.signal_count == EXPECTED_SIGNALS[name]


def test_arterial_spec_is_a_realistic_corridor() -> None:
    spec = load_spec("arterial")
    assert (spec.net.x_number, spec.net.y_number) == (5, 1)
    assert 200 <= spec.net.x_length <= 300
    assert spec.net.lanes == 2
    assert 45 <= spec.net.speed_kmh <= 55
    assert spec.demand.main_axis == "x"
    assert len(spec.demand.emergency) == 1 and spec.demand.emergency[0].along_main
    assert load_spec("single").demand.emergency == ()
    assert load_spec("grid").demand.emergency == ()


def test_load_spec_accepts_a_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(_packaged_text("single").replace('name = "single"\n', ""), encoding="utf-8")
    spec = load_spec(path)
    assert spec.name == "mine"
    assert spec.source == str(path)


def test_unknown_name_lists_the_available_scenarios() -> None:
    with pytest.raises(ConfigError, match="single, arterial, grid"):
        load_spec("nowhere")


@pytest.mark.parametrize("name", SCENARIOS)
def test_net_has_the_expected_traffic_lights(built: dict[str, Path], name: str) -> None:
    cfg = built[name]
    assert cfg.name == f"{name}.sumocfg"
    net = sumolib.net.readNet(str(cfg.with_name(f"{name}.net.xml")), withPrograms=True)
    lights = net.getTrafficLights()
    assert len(lights) == EXPECTED_SIGNALS[name]
    assert all(tls.getPrograms() for tls in lights)


@pytest.mark.parametrize("name", SCENARIOS)
def test_sumocfg_uses_relative_paths_and_the_window(built: dict[str, Path], name: str) -> None:
    root = ET.parse(built[name]).getroot()
    assert root.find("input/net-file").get("value") == f"{name}.net.xml"  # type: ignore[union-attr]
    assert root.find("input/route-files").get("value") == f"{name}.rou.xml"  # type: ignore[union-attr]
    assert root.find("time/begin").get("value") == "0"  # type: ignore[union-attr]
    window = load_spec(name).demand.window_s
    assert root.find("time/end").get("value") == str(window)  # type: ignore[union-attr]


@pytest.mark.parametrize("name", SCENARIOS)
def test_flows_vary_over_time_with_a_peak(built: dict[str, Path], name: str) -> None:
    routes = _routes(built[name])
    flows = routes.findall("flow")
    assert flows
    per_slice: dict[float, float] = defaultdict(float)
    for flow in flows:
        assert flow.get("departLane") == "best"
        assert flow.get("from") and flow.get("to")
        per_slice[float(flow.get("begin", "nan"))] += float(flow.get("probability", "nan"))
    begins = sorted(per_slice)
    assert len(begins) >= 6
    rates = [per_slice[b] for b in begins]
    middle = rates[len(rates) // 2 - 1 : len(rates) // 2 + 1]
    assert min(middle) > 1.3 * max(rates[0], rates[-1])
    in_file_order = [float(f.get("begin", "nan")) for f in flows]
    assert in_file_order == sorted(in_file_order)  # SUMO wants departures sorted


def test_main_road_is_heavier_than_side_streets(built: dict[str, Path]) -> None:
    per_entry: dict[str, float] = defaultdict(float)
    for flow in _routes(built["arterial"]).findall("flow"):
        per_entry[flow.get("from", "")] += float(flow.get("probability", "nan"))
    main_in, _ = library.main_road(
        load_spec("arterial"),
        sumolib.net.readNet(str(built["arterial"].with_name("arterial.net.xml"))),
    )
    side = [rate for edge, rate in per_entry.items() if edge.startswith(("top", "bottom"))]
    assert side and per_entry[main_in] > 2 * max(side)


def test_arterial_emergency_vehicle_obeys_signals(built: dict[str, Path]) -> None:
    routes = _routes(built["arterial"])
    vtype = routes.find("vType[@id='emergency']")
    assert vtype is not None and vtype.get("vClass") == "emergency"
    assert not any("bluelight" in ET.tostring(e, encoding="unicode") for e in routes)
    trips = routes.findall("trip")
    assert len(trips) == 1 and trips[0].get("type") == "emergency"
    net = sumolib.net.readNet(str(built["arterial"].with_name("arterial.net.xml")))
    assert (trips[0].get("from"), trips[0].get("to")) == library.main_road(
        load_spec("arterial"), net
    )
    assert float(trips[0].get("depart", "nan")) == 1800.0


def test_same_seed_same_routes_other_seed_other_routes(tmp_path: Path) -> None:
    spec = load_spec("single")
    a = build_scenario(spec, tmp_path / "a", seed=7).with_name("single.rou.xml")
    b = build_scenario(spec, tmp_path / "b", seed=7).with_name("single.rou.xml")
    c = build_scenario(spec, tmp_path / "c", seed=8).with_name("single.rou.xml")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("peak_veh_per_h = 1000.0", "", "demand.peak_veh_per_h"),
        ("peak_veh_per_h = 1000.0", "peak_veh_per_h = -5", "demand.peak_veh_per_h"),
        ("lanes = 2", 'lanes = "two"', "net.lanes"),
        ("lanes = 2", "lanes = 2.5", "net.lanes"),
        ("x_number = 5", "", "net.x_number"),
        ("turn_left = 0.1", "turn_left = true", "demand.turn_left"),
        ("speed_kmh = 50.0", "speed_kmh = 50.0\nspeed = 3", "net.speed"),
        ('route = "main"', 'route = "side"', "demand.emergency[0].route"),
        ('route = "main"', 'from = "left0A0"', "demand.emergency[0].from"),
        ("depart = 1800", "depart = 9999", "demand.emergency[0].depart"),
        ('main_axis = "x"', 'main_axis = "z"', "demand.main_axis"),
        ('main_axis = "x"', "", "demand.emergency[0].route"),
        ("[demand]", "[demand_]", "demand"),
        ('name = "arterial"', 'name = "../x"', "name"),
    ],
)
def test_bad_toml_names_the_key(tmp_path: Path, old: str, new: str, key: str) -> None:
    text = _packaged_text("arterial")
    assert old in text
    path = tmp_path / "bad.toml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path}: ")
    assert key in str(info.value)


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[net\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_spec(path)


def test_unknown_emergency_edge_is_a_config_error(tmp_path: Path) -> None:
    text = _packaged_text("arterial").replace('route = "main"', 'from = "nope"\nto = "E0right0"')
    path = tmp_path / "ev.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"demand\.emergency\[0\]\.from"):
        build_scenario(load_spec(path), tmp_path / "out")


def test_netgenerate_failure_is_a_scenario_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(library, "_netgenerate_args", lambda net, out: ["--no-such-option"])
    with pytest.raises(ScenarioError, match="no-such-option"):
        build_scenario(load_spec("single"), tmp_path)


@pytest.mark.sumo
@pytest.mark.parametrize("name", SCENARIOS)
def test_short_sumo_run_has_arrivals(built: dict[str, Path], name: str) -> None:
    binary = sumolib.checkBinary("sumo")
    if shutil.which(binary) is None and not Path(binary).is_file():
        pytest.skip("sumo is not installed")
    cfg = built[name]
    stats = cfg.with_name(f"{name}.stats.xml")
    subprocess.run(
        [
            binary,
            "-c",
            str(cfg),
            "--end",
            "600",
            "--statistic-output",
            str(stats),
            "--time-to-teleport",
            "-1",
            "--no-step-log",
            "--no-warnings",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    root = ET.parse(stats).getroot()
    vehicles = root.find("vehicles")
    assert vehicles is not None
    inserted = int(vehicles.get("inserted", "0"))
    arrived = inserted - int(vehicles.get("running", "0"))
    assert inserted > 50
    assert arrived > 20
    assert int(vehicles.get("waiting", "0")) < 10
