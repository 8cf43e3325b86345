"""The unseen-scenario bench's generator: one tiny scenario, loaded and run briefly."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from citybrain.sim.runner import prepare
from citybrain.sim.scenario import load_scenario

pytestmark = pytest.mark.sumo

ROOT = Path(__file__).resolve().parent.parent


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("unseen_bench", ROOT / "bench" / "unseen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def test_scenarios_are_deterministic_from_the_scenario_seed() -> None:
    unseen = _bench()
    assert unseen.specs(7) == unseen.specs(7)
    assert [s.net_args for s in unseen.specs(1)] != [s.net_args for s in unseen.specs(2)]
    levels = unseen.profile(unseen.specs(1)[0])
    peak = max(levels)
    assert levels[0] == levels[-1] < peak == pytest.approx(unseen.PEAK_DENSITY, rel=0.05)


def test_a_tiny_generated_scenario_loads_and_runs(tmp_path: Path) -> None:
    unseen = _bench()
    tiny = unseen.Spec(
        "tiny",
        (
            "--grid",
            "--grid.number",
            "3",
            "--grid.length",
            "150",
            "--grid.attach-length",
            "100",
            "--default.junctions.type",
            "traffic_light",
            "--no-turnarounds",
            "--seed",
            "1",
        ),
        seed=1,
        window_s=300,
        drain_s=60,
        slices=3,
    )
    built = unseen.build(tiny, tmp_path / "tiny")
    assert built.signals == 9 and built.vehicles > 0

    scenario = load_scenario(built.cfg)
    assert (scenario.begin_s, scenario.end_s) == (0.0, 360.0)
    assert scenario.route_files and all(f.is_file() for f in scenario.route_files)
    _, _, layout = prepare(built.cfg)
    assert len(layout.intersections) == 9  # every signal, as the harness models it
    assert layout.loops  # with detectors to read

    script = Path(sys.executable).with_name("citybrain")
    base = [str(script)] if script.is_file() else [sys.executable, "-m", "citybrain.cli"]
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            *base,
            "sim",
            "run",
            str(built.cfg),
            "--controller",
            "adaptive",
            "--seed",
            "1",
            "--out",
            str(out),
            "--end",
            "240",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mean_delay_s"] >= 0.0
    assert metrics["vehicles"]["completed"] > 0
