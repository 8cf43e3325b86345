"""The command line: clear one-line errors, and real runs through it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from citybrain.cli import main


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "citybrain.cli", *args], capture_output=True, text=True, timeout=600
    )


def test_missing_scenario_is_one_line(tmp_path: Path) -> None:
    r = cli("sim", "run", str(tmp_path / "nope.sumocfg"))
    assert r.returncode == 2
    assert (
        r.stderr.strip()
        == f"citybrain: error: scenario file not found: {tmp_path / 'nope.sumocfg'}"
    )
    assert "Traceback" not in r.stderr


def test_unknown_controller(single_cfg: Path) -> None:
    r = cli("sim", "run", str(single_cfg), "--controller", "magic")
    assert r.returncode == 2
    assert "unknown controller 'magic'; choose one of: fixed, actuated" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_net_without_traffic_lights(tmp_path: Path) -> None:
    import sumolib

    net = tmp_path / "plain.net.xml"
    subprocess.run(
        [sumolib.checkBinary("netgenerate"), "--grid", "--grid.number", "2", "-o", str(net)],
        check=True,
        capture_output=True,
    )
    cfg = tmp_path / "plain.sumocfg"
    cfg.write_text(
        '<configuration><input><net-file value="plain.net.xml"/></input></configuration>'
    )
    r = cli("sim", "run", str(cfg))
    assert r.returncode == 2
    assert (
        r.stderr.strip()
        == "citybrain: error: plain.sumocfg: the network has no traffic lights to control"
    )


def test_bad_config_names_the_key(single_cfg: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[actuated]\nmax_green_s = 'long'\n")
    r = cli("sim", "run", str(single_cfg), "--config", str(bad))
    assert r.returncode == 2
    assert "actuated.max_green_s must be a number" in r.stderr


def test_sim_run_writes_metrics(single_cfg: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert (
        main(
            [
                "sim",
                "run",
                str(single_cfg),
                "--controller",
                "actuated",
                "--seed",
                "2",
                "--out",
                str(out),
                "--end",
                "400",
            ]
        )
        == 0
    )
    data = json.loads((out / "metrics.json").read_text())
    assert data["controller"] == "actuated" and data["seed"] == 2


@pytest.mark.sumo
def test_sim_compare_writes_table_json_and_chart(single_cfg: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    r = cli(
        "sim",
        "compare",
        str(single_cfg),
        "--controllers",
        "fixed,actuated",
        "--seeds",
        "1,2",
        "--out",
        str(out),
        "--end",
        "400",
    )
    assert r.returncode == 0, r.stderr
    assert "fixed" in r.stdout and "actuated" in r.stdout and "±" in r.stdout
    data = json.loads((out / "compare.json").read_text())
    assert len(data["runs"]) == 4
    assert set(data["summary"]) == {"fixed", "actuated"}
    assert data["summary"]["fixed"]["mean_delay_s"]["n"] == 2
    assert (out / "compare.png").stat().st_size > 10_000


def test_control_inspect(single_cfg: Path) -> None:
    r = cli("control", "inspect", str(single_cfg), "--json")
    assert r.returncode == 0, r.stderr
    (model,) = json.loads(r.stdout)
    assert model["phases"] and model["links"]
