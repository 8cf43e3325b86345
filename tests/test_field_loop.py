"""SUMO-in-the-loop: SUMO as the field, a cabinet per signal on a real broker; the controller
in a separate ``citybrain control serve`` process (lockstep equals in-process), and drills."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from citybrain.field.cabinet import CabinetSettings
from citybrain.mqtt.address import BrokerSettings
from citybrain.settings import Settings
from citybrain.sim.fieldloop import FieldFaults, FieldOptions
from citybrain.sim.runner import RunOptions, run

from .brokers import shared_broker

FAST = dataclasses.replace(
    Settings(), cabinet=CabinetSettings(watchdog_s=2.0, handover_after_s=1.0)
)


@pytest.fixture(scope="module")
def mqtt_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with shared_broker(tmp_path_factory.mktemp("broker")) as url:
        yield url


def _root() -> str:
    return f"cbf{uuid.uuid4().hex[:8]}"


def _field(url: str, root: str, **kw: Any) -> FieldOptions:
    return FieldOptions(BrokerSettings.from_url(url), root=root, **kw)


def _metrics(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "metrics.json").read_text())
    return data


def test_without_a_service_the_cabinets_run_their_local_plans(
    single_cfg: Path, mqtt_url: str, tmp_path: Path
) -> None:
    """Nobody claims the cabinets: each runs the stored plan through its own envelope, which
    is exactly what the in-process ``plan`` controller shows."""
    field = run(
        single_cfg,
        tmp_path / "field",
        RunOptions("plan", settings=FAST, end_s=900, field=_field(mqtt_url, _root())),
    ).metrics
    alone = run(single_cfg, tmp_path / "plan", RunOptions("plan", settings=FAST, end_s=900)).metrics
    assert field.mean_delay_s == alone.mean_delay_s
    assert field.vehicles == alone.vehicles
    f = _metrics(tmp_path / "field")["field"]
    assert f["commands_shown"] == 0 and f["unsafe_states"] == 0 and f["fallbacks"] == 0
    assert f["cabinets"] == 1 and f["holders_at_end"] == []
    assert field.controller == "field"


def test_bad_fault_settings_fail_naming_the_key() -> None:
    from citybrain.errors import ConfigError

    with pytest.raises(ConfigError, match=r"faults\.drop"):
        FieldFaults(drop=1.5)
    with pytest.raises(ConfigError, match="--clock"):
        FieldOptions(BrokerSettings.from_url("mqtt://x:1"), clock="fast")
