"""Real, short SUMO runs through the harness."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from citybrain.sim.runner import RunOptions, run
from citybrain.sim.scenario import load_scenario

from .byhand import plain_sumo_delay
from .conftest import RESCO_MAPS, resco_config

pytestmark = pytest.mark.sumo


def test_fixed_reproduces_plain_sumo_on_a_generated_scenario(
    single_cfg: Path, tmp_path: Path
) -> None:
    result = run(single_cfg, tmp_path / "run", RunOptions("fixed", seed=4, end_s=900))
    plain = plain_sumo_delay(single_cfg, 4, tmp_path / "plain", end=900)
    assert result.signal_writes == 0  # the plan follower showed exactly SUMO's own program
    assert result.metrics.mean_delay_s == pytest.approx(plain, rel=0.03)
    assert result.metrics.vehicles.completed > 0


def test_fixed_reproduces_plain_sumo_with_an_offset(single_cfg: Path, tmp_path: Path) -> None:
    # Give the signal a plan offset the harness has never seen, then compare with plain sumo.
    scenario_dir = tmp_path / "offset"
    scenario_dir.mkdir()
    for f in single_cfg.parent.iterdir():
        text = f.read_text()
        if f.name.endswith(".net.xml"):
            assert 'offset="0"' in text
            text = text.replace('offset="0"', 'offset="17"')
        (scenario_dir / f.name).write_text(text)
    cfg = scenario_dir / single_cfg.name
    result = run(cfg, tmp_path / "run", RunOptions("fixed", seed=2, end_s=600))
    assert result.signal_writes == 0
    assert result.metrics.mean_delay_s == pytest.approx(
        plain_sumo_delay(cfg, 2, tmp_path / "plain", end=600), rel=0.03
    )


def test_fixed_reproduces_plain_sumo_on_a_resco_map(tmp_path: Path) -> None:
    cfg = resco_config("cologne1")
    result = run(cfg, tmp_path / "run", RunOptions("fixed", seed=1, end_s=25200 + 900))
    assert result.signal_writes == 0
    plain = plain_sumo_delay(cfg, 1, tmp_path / "plain", end=25200 + 900)
    assert result.metrics.mean_delay_s == pytest.approx(plain, rel=0.03)


def test_actuated_runs_and_changes_the_signals(arterial_cfg: Path, tmp_path: Path) -> None:
    result = run(arterial_cfg, tmp_path / "run", RunOptions("actuated", seed=1, end_s=900))
    assert result.signal_writes > 0
    assert (tmp_path / "run" / "detectors.add.xml").is_file()
    m = result.metrics
    assert m.vehicles.completed > 0 and m.mean_delay_s > 0


def test_traci_backend_gives_the_same_run_as_libsumo(single_cfg: Path, tmp_path: Path) -> None:
    a = run(single_cfg, tmp_path / "lib", RunOptions("actuated", seed=3, end_s=600))
    b = run(
        single_cfg, tmp_path / "traci", RunOptions("actuated", seed=3, backend="traci", end_s=600)
    )
    assert a.metrics.mean_delay_s == pytest.approx(b.metrics.mean_delay_s)
    assert a.signal_writes == b.signal_writes


def test_metrics_json_has_the_contract_keys(single_cfg: Path, tmp_path: Path) -> None:
    run(single_cfg, tmp_path, RunOptions("fixed", seed=1, end_s=300))
    data = json.loads((tmp_path / "metrics.json").read_text())
    for key in (
        "scenario",
        "controller",
        "seed",
        "sumo_version",
        "mean_delay_s",
        "mean_travel_time_s",
        "mean_waiting_time_s",
        "throughput_veh_per_h",
        "vehicles",
        "emergency",
        "wall_time_s",
    ):
        assert key in data
    assert set(data["vehicles"]) == {"completed", "unfinished", "never_departed"}
    assert data["sumo_version"].startswith("1.28")
    assert (tmp_path / "tripinfo.xml").is_file()


@pytest.mark.resco
@pytest.mark.parametrize("controller", ["fixed", "actuated"])
@pytest.mark.parametrize("name", RESCO_MAPS)
def test_every_resco_map_runs_under_both_controllers(
    name: str, controller: str, tmp_path: Path
) -> None:
    cfg = resco_config(name)
    scenario = load_scenario(cfg)
    result = run(cfg, tmp_path, RunOptions(controller, seed=1, end_s=scenario.begin_s + 300))
    m = result.metrics
    assert m.vehicles.completed + m.vehicles.unfinished > 0
    assert (result.signal_writes == 0) == (controller == "fixed")


def test_emergency_vehicle_is_measured_against_its_free_flow_time(
    arterial_cfg: Path, tmp_path: Path
) -> None:
    result = run(arterial_cfg, tmp_path, RunOptions("fixed", seed=1, end_s=2400))
    (amb,) = result.metrics.emergency
    assert amb.id == "ambulance" and amb.completed
    assert amb.free_flow_time_s is not None
    # alone, with the signals off, the trip is faster than in traffic, but not instant
    assert 0 < amb.free_flow_time_s < amb.travel_time_s
    assert amb.free_flow_time_s > 1000 / 14  # over 1 km of main road at <= 50 km/h


@pytest.mark.parametrize(
    "controller", ["sumo-actuated", "webster", "maxpressure", "greedy", "adaptive"]
)
def test_every_controller_runs_inside_the_envelope(
    controller: str, arterial_cfg: Path, tmp_path: Path
) -> None:
    # run() fails on any signal-monitor violation of what SUMO actually showed
    result = run(arterial_cfg, tmp_path, RunOptions(controller, seed=1, end_s=900))
    m = result.metrics
    assert m.vehicles.completed > 0
    assert m.extra["decision_ms_per_intersection"]["p99"] >= 0


def test_adaptive_runs_with_noisy_cameras_and_failed_loops(
    arterial_cfg: Path, tmp_path: Path
) -> None:
    from citybrain.settings import Settings
    from citybrain.sim.sensors import LoopFault, SensorSettings

    noisy = Settings(
        sensors=SensorSettings(
            camera_miss_rate=0.1,
            camera_double_rate=0.05,
            failed_loops_per_intersection=1,
            loop_fault=LoopFault.DEAD,
            seed=3,
        )
    )
    result = run(arterial_cfg, tmp_path, RunOptions("adaptive", seed=1, settings=noisy, end_s=900))
    assert result.metrics.vehicles.completed > 0


def test_timeline_records_every_change_and_plots(single_cfg: Path, tmp_path: Path) -> None:
    from citybrain.sim.plots import phase_timeline

    run(single_cfg, tmp_path, RunOptions("fixed", seed=1, end_s=400, timeline=True))
    timeline = json.loads((tmp_path / "timeline.json").read_text())
    (changes,) = timeline.values()
    states = [state for _, state in changes]
    assert all(a != b for a, b in itertools.pairwise(states))  # changes only
    times = [t for t, _ in changes]
    assert times == sorted(times) and len(changes) > 4  # 400 s of a 90 s cycle
    png = phase_timeline({"fixed": timeline}, tmp_path / "t.png", (0, 400))
    assert png.stat().st_size > 5_000
