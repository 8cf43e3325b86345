"""Fault drills of SUMO-in-the-loop on a small net: real ``control serve`` processes, a
private broker, faults struck mid-run. Nothing unsafe is ever shown; each drill ends the way
the field contract says it must."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from citybrain.mqtt.brokers import BrokerProcess
from citybrain.sim.drills import BrokerHooks, DrillResult, DrillSetup, run_drill

from .brokers import own_broker

WATCHDOG_S = 3.0
CABINETS = 5  # the arterial's signals


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    with own_broker(tmp_path_factory.mktemp("drill-broker")) as b:
        yield b


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("drill-config") / "fast.toml"
    path.write_text(f"[cabinet]\nwatchdog_s = {WATCHDOG_S}\nhandover_after_s = 1.5\n")
    return path


def _drill(
    name: str, arterial_cfg: Path, broker: BrokerProcess, config: Path, tmp_path: Path
) -> DrillResult:
    setup = DrillSetup(
        arterial_cfg,
        "adaptive",
        broker.url,
        tmp_path / name,
        config=config,
        end_s=600,
        strike_s=200,
        restart_after_s=60,
        broker=BrokerHooks(broker.stop, broker.start),
    )
    result = run_drill(setup, name)
    f = result.field
    assert f["unsafe_states"] == 0, f
    assert f["cabinets"] == CABINETS
    return result


def test_undisturbed(
    arterial_cfg: Path, broker: BrokerProcess, config: Path, tmp_path: Path
) -> None:
    f = _drill("none", arterial_cfg, broker, config, tmp_path).field
    assert f["commands_shown"] == CABINETS * 600 and f["fallbacks"] == 0
    assert f["monitor_refusals"] == 0 and f["holders_at_end"] == ["svc-a"]


def test_kill_9_every_cabinet_falls_back_within_the_watchdog_time(
    arterial_cfg: Path, broker: BrokerProcess, config: Path, tmp_path: Path
) -> None:
    result = _drill("kill", arterial_cfg, broker, config, tmp_path)
    f = result.field
    assert result.service_exits == (-9,)
    assert f["fallbacks"] == CABINETS and 0 < f["fallback_after_s"] <= WATCHDOG_S
    assert f["holders_at_end"] == []
    assert f["commands_shown"] <= CABINETS * 201  # nothing after the kill


def test_restart_resumes_control(
    arterial_cfg: Path, broker: BrokerProcess, config: Path, tmp_path: Path
) -> None:
    f = _drill("restart", arterial_cfg, broker, config, tmp_path).field
    assert f["fallbacks"] == CABINETS and f["holders_at_end"] == ["svc-a"]
    assert f["commands_shown"] > CABINETS * 201 and f["monitor_refusals"] == 0


def test_a_hot_standby_takes_over(
    arterial_cfg: Path, broker: BrokerProcess, config: Path, tmp_path: Path
) -> None:
    result = _drill("standby", arterial_cfg, broker, config, tmp_path)
    f = result.field
    assert result.service_exits[0] == -9
    assert f["holders_at_end"] == ["svc-b"] and f["monitor_refusals"] == 0
    assert f["commands_shown"] > CABINETS * 500


def test_a_broker_restart(
    arterial_cfg: Path, broker: BrokerProcess, config: Path, tmp_path: Path
) -> None:
    f = _drill("broker-restart", arterial_cfg, broker, config, tmp_path).field
    assert f["holders_at_end"] == ["svc-a"] and f["commands_shown"] > CABINETS * 201


def test_lost_duplicated_and_reordered_messages(
    arterial_cfg: Path, broker: BrokerProcess, config: Path, tmp_path: Path
) -> None:
    f = _drill("faults", arterial_cfg, broker, config, tmp_path).field
    injected = f["injected_faults"]
    assert injected["dropped"] > 0 and injected["duplicated"] > 0 and injected["reordered"] > 0
    assert f["commands_shown"] > CABINETS * 300  # control goes on through the faults


def test_cabinet_clocks_off_by_seconds(
    arterial_cfg: Path, broker: BrokerProcess, config: Path, tmp_path: Path
) -> None:
    f = _drill("clock-skew", arterial_cfg, broker, config, tmp_path).field
    assert f["fallbacks"] == 0 and f["commands_shown"] == CABINETS * 600


def test_malformed_commands_are_refused_and_control_goes_on(
    arterial_cfg: Path, broker: BrokerProcess, config: Path, tmp_path: Path
) -> None:
    f = _drill("malformed", arterial_cfg, broker, config, tmp_path).field
    assert f["malformed_commands"] == 3 * CABINETS
    assert f["fallbacks"] == 0 and f["commands_shown"] == CABINETS * 600
