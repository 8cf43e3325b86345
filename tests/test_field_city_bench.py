"""The city bench's machinery on a tiny city: a generated 3x3 grid, two cabinet agents, two
services on two shards ticking on the readings, a private Mosquitto; what the bench measures
comes back and makes its table (the numbers themselves are the machine's, not asserted)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.sumo

ROOT = Path(__file__).resolve().parent.parent


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("field_city", ROOT / "bench" / "field_city.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def test_the_city_bench_runs_a_tiny_city_on_two_shards(tmp_path: Path) -> None:
    bench = _bench()
    grid = bench.Grid.parse("3x3")
    net = bench.build_city(grid, tmp_path / "nets")
    assert bench.build_city(grid, tmp_path / "nets") == net  # made once
    spec = bench.RunSpec("tiny", grid, services=2, agents=2)
    result = bench.run_city(
        spec,
        net,
        tmp_path / "runs",
        controller="adaptive",
        flow_vph=600.0,
        window_s=3.0,
        settle_s=1.0,
        warmup_max_s=90.0,
        tick_wait_s=0.5,
    )
    assert result.errors == []
    assert result.signals == 9 and result.held == 9
    assert sorted(result.roles.values()) == ["agent", "agent", "broker", "service", "service"]
    assert set(result.cpu_s) == set(result.roles) and min(result.cpu_s.values()) >= 0.0
    # the services ticked on the readings; the cabinets took commands computed from them
    assert result.ticks and result.agent_seconds
    assert result.latency_ms
    assert result.cabinets["unsafe"] == 0 and result.cabinets["commands"] > 0
    for name in ("service0", "service1"):
        stats = json.loads((tmp_path / "runs" / "tiny" / f"{name}.json").read_text())
        assert stats["readings_ticks"] > 0 and stats["signals"] in (4, 5)
    row = bench.row(result)
    assert row.startswith("| tiny | 9 | 2 | 2 | readings | 9 |")
    assert row.count("|") == bench.HEADER.splitlines()[0].count("|")


def test_cities_are_named_nx_by_ny() -> None:
    bench = _bench()
    assert bench.Grid.parse("32x16").signals == 512
    for bad in ("32", "1x5", "ax2"):
        with pytest.raises(SystemExit):
            bench.Grid.parse(bad)
    assert bench.pct([3.0, 1.0, 2.0, 4.0], 0.5) == 2.0
    assert bench.pct([3.0, 1.0, 2.0, 4.0], 0.99) == 4.0


def test_control_serve_refuses_a_wait_for_readings_of_a_second_or_more(tmp_path: Path) -> None:
    import subprocess

    bench = _bench()
    net = bench.build_city(bench.Grid.parse("2x2"), tmp_path)
    command = ["control", "serve", "--net", str(net), "--broker", "mqtt://127.0.0.1:1"]
    done = subprocess.run(
        [sys.executable, "-m", "citybrain.cli", *command, "--tick-on-readings", "1.5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1, done.stderr
    assert "less than 1 s, not 1.5" in lines[0]
