"""Fault drills of a SUMO-in-the-loop run: real service processes, a real broker, and faults
struck at a chosen simulated second.

A drill runs one field run (``sim/fieldloop.py``) in this process with one or two
``citybrain control serve`` subprocesses, and strikes when the simulation reaches
``strike_s``: kill -9 of the service (and optionally its restart), a hot standby left to take
over, a broker restart, malformed commands on the wire; message loss, duplication and
reordering, or a cabinet clock that is off, run from the start. ``DrillResult`` has the run's
metrics with their ``field`` object (refusals, fallbacks, unsafe states, latency).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paho.mqtt.client import MQTTMessage

from citybrain.errors import CitybrainError, ConfigError
from citybrain.field.protocol import FieldPayloadError, command_topic, decode_liveness
from citybrain.mqtt.address import BrokerSettings, unique_client_id
from citybrain.mqtt.paho import make_client
from citybrain.settings import load_settings
from citybrain.sim.fieldloop import FieldFaults, FieldOptions
from citybrain.sim.metrics import Metrics
from citybrain.sim.runner import RunOptions, run

DRILLS: tuple[str, ...] = (
    "none",
    "kill",
    "restart",
    "standby",
    "broker-restart",
    "faults",
    "clock-skew",
    "malformed",
)
"""``none``: the undisturbed field run; ``kill``: kill -9 of the service at ``strike_s``;
``restart``: the same, and a new service ``restart_after_s`` later; ``standby``: a second
service (another id) waits as hot standby, the first is killed; ``broker-restart``: the broker
is stopped at ``strike_s`` and started again ``restart_after_s`` later (needs ``broker``
hooks); ``faults``: 5 % of messages dropped, 5 % duplicated, 5 % reordered, all run long;
``clock-skew``: every cabinet's clock 7 s behind; ``malformed``: garbage on every cabinet's
command topic at ``strike_s``."""


@dataclass(frozen=True)
class BrokerHooks:
    """How to stop and start the run's broker (``broker-restart``)."""

    stop: Callable[[], None]
    start: Callable[[], None]


@dataclass(frozen=True)
class DrillSetup:
    scenario: Path
    controller: str
    broker_url: str
    out: Path
    seed: int = 1
    config: Path | None = None
    """The settings file of the run and of the service processes alike."""
    end_s: float | None = None
    strike_s: float = 600.0
    restart_after_s: float = 120.0
    broker: BrokerHooks | None = None
    root: str = ""
    """Topic root; a fresh one per drill when empty."""


@dataclass(frozen=True)
class DrillResult:
    drill: str
    metrics: Metrics
    field: dict[str, Any]
    struck_at_s: float | None
    service_exits: tuple[int | None, ...]
    """Return codes of the service processes (None: still running when the run ended)."""
    wall_s: float


def service_command(setup: DrillSetup, root: str, service_id: str, standby: bool) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "citybrain.cli",
        "control",
        "serve",
        "--broker",
        setup.broker_url,
        "--net",
        str(setup.scenario),
        "--controller",
        setup.controller,
        "--escort",
        "corridor",
        "--topic-root",
        root,
        "--service-id",
        service_id,
        "--client-id",
        f"{service_id}-{uuid.uuid4().hex[:6]}",
    ]
    if standby:
        cmd.append("--standby")
    if setup.config is not None:
        cmd += ["--config", str(setup.config)]
    return cmd


class _Services:
    """The drill's ``control serve`` processes."""

    def __init__(self, setup: DrillSetup, root: str, log_dir: Path) -> None:
        self.setup, self.root, self.log_dir = setup, root, log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, service_id: str, standby: bool = False) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"service-{len(self.procs)}-{service_id}.log").open("wb")
        proc = subprocess.Popen(
            service_command(self.setup, self.root, service_id, standby),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> tuple[int | None, ...]:
        codes = tuple(p.poll() for p in self.procs)
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
        return codes


def _garbage(setup: DrillSetup, root: str, signals: Sequence[str]) -> None:
    broker = BrokerSettings.from_url(setup.broker_url)
    client = make_client(broker, unique_client_id("citybrain-drill"), clean_session=True)
    client.connect(broker.address.host, broker.address.port, keepalive=10)
    client.loop_start()
    try:
        for key in signals:
            for payload in (b"{not json", b'{"service": "x"}', b'{"service": "x", "ts": 1e99}'):
                client.publish(command_topic(key, root), payload, qos=1).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def wait_online(url: str, root: str, services: Sequence[str], timeout_s: float = 60.0) -> None:
    """Block until every one of ``services`` says it is online (its retained liveness);
    ``CitybrainError`` naming the missing ones after ``timeout_s``."""
    broker = BrokerSettings.from_url(url)
    online: dict[str, bool] = {}
    lock = threading.Lock()

    def on_message(_c: Any, _u: Any, message: MQTTMessage) -> None:
        service = message.topic.rsplit("/", 1)[-1]
        try:
            live = decode_liveness(bytes(message.payload), service)
        except FieldPayloadError:
            return
        with lock:
            online[service] = live.online

    client = make_client(broker, unique_client_id("citybrain-drill"), clean_session=True)
    client.on_message = on_message
    client.connect(broker.address.host, broker.address.port, keepalive=10)
    client.loop_start()
    try:
        client.subscribe(f"{root}/control/services/+", 1)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with lock:
                missing = [s for s in services if not online.get(s)]
            if not missing:
                return
            time.sleep(0.05)
        raise CitybrainError(f"service(s) {', '.join(missing)} not online in {timeout_s:g} s")
    finally:
        client.disconnect()
        client.loop_stop()


def run_drill(setup: DrillSetup, drill: str) -> DrillResult:
    """Run ``setup.scenario`` in the field with ``drill``; the service processes are started
    here (the first is ``svc-a``; the standby ``svc-b``)."""
    if drill not in DRILLS:
        raise ConfigError(f"unknown drill {drill!r}; choose one of: {', '.join(DRILLS)}")
    if drill == "broker-restart" and setup.broker is None:
        raise ConfigError("the broker-restart drill needs a broker it can stop and start")
    root = setup.root or f"drill{uuid.uuid4().hex[:8]}"
    out = setup.out
    out.mkdir(parents=True, exist_ok=True)
    faults = FieldFaults()
    if drill == "faults":
        faults = FieldFaults(drop=0.05, duplicate=0.05, reorder=0.05, seed=setup.seed)
    elif drill == "clock-skew":
        faults = FieldFaults(clock_offset_s=-7.0)
    options = RunOptions(
        setup.controller,
        setup.seed,
        settings=load_settings(setup.config),
        end_s=setup.end_s,
        field=FieldOptions(BrokerSettings.from_url(setup.broker_url), root=root, faults=faults),
    )
    services = _Services(setup, root, out)
    first = services.start("svc-a")
    expected = ["svc-a"]
    if drill == "standby":
        services.start("svc-b", standby=True)
        expected.append("svc-b")
    wait_online(setup.broker_url, root, expected)
    struck: list[float] = []
    later: list[float] = []

    def progress(t: float) -> None:
        if not struck and t >= setup.strike_s:
            struck.append(t)
            _strike(drill, setup, services, first, root)
            later.append(t + setup.restart_after_s)
        elif later and t >= later[0]:
            later.clear()
            if drill == "restart":  # simulated time stands still while it starts
                services.start("svc-a")
                wait_online(setup.broker_url, root, ["svc-a"])
            elif drill == "broker-restart" and setup.broker is not None:
                setup.broker.start()
                wait_online(setup.broker_url, root, expected)

    wall = time.perf_counter()
    try:
        result = run(setup.scenario, out / "run", options, progress)
    finally:
        codes = services.stop_all()
    metrics = result.metrics
    data = metrics.extra.get("field")
    if not isinstance(data, dict):
        raise CitybrainError("the field run wrote no field object")
    return DrillResult(
        drill,
        metrics,
        data,
        struck[0] if struck else None,
        codes,
        time.perf_counter() - wall,
    )


def _strike(
    drill: str,
    setup: DrillSetup,
    services: _Services,
    first: subprocess.Popen[bytes],
    root: str,
) -> None:
    if drill in ("kill", "restart", "standby"):
        services.kill(first)
    elif drill == "broker-restart" and setup.broker is not None:
        setup.broker.stop()
    elif drill == "malformed":
        from citybrain.netmodel.net import intersections_from_net, net_file_of, read_net

        xs = intersections_from_net(read_net(net_file_of(setup.scenario)))
        _garbage(setup, root, [x.id for x in xs])
