"""``citybrain control serve`` against real cabinets (``citybrain cabinet run``), both real
processes on a real broker: the closed loop, a restart after kill -9, a hot standby taking over
after kill -9, two services without --standby, a graceful stop that hands the signals back.

The cabinets here have a generous watchdog (10 s, handover after 2 s) so that a slow machine
does not turn a takeover into a fallback; what is asserted is behaviour, not speed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.client import MQTTMessage

from citybrain.field.protocol import (
    CabinetEvent,
    Command,
    FieldPayloadError,
    Shown,
    decode_command,
    decode_event,
    decode_shown,
    shown_topic,
)
from citybrain.mqtt.address import BrokerSettings
from citybrain.mqtt.paho import make_client

from .brokers import shared_broker

SIGNALS = ("A0", "B0", "C0", "D0", "E0")  # the arterial scenario's
CONFIG = """
[cabinet]
watchdog_s = 10.0
handover_after_s = 2.0
"""
TIMING_RULES = ("short_yellow", "short_all_red", "short_min_green")


@pytest.fixture(scope="module")
def mqtt_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with shared_broker(tmp_path_factory.mktemp("broker")) as url:
        yield url


class Field:
    """What the cabinets say on the broker: the last report of each, every event, every
    command; and the processes of one test (stopped at its end)."""

    def __init__(self, url: str, cfg: Path, tmp: Path) -> None:
        self.url, self.cfg, self.tmp = url, cfg, tmp
        self.root = f"cbsvc/{uuid.uuid4().hex[:10]}"
        self.config = tmp / "field.toml"
        self.config.write_text(CONFIG)
        self.lock = threading.Lock()
        self.shown: dict[str, Shown] = {}
        self.events: list[CabinetEvent] = []
        self.commands: list[Command] = []
        self.services: dict[str, dict[str, Any]] = {}
        self.procs: list[subprocess.Popen[bytes]] = []
        settings = BrokerSettings.from_url(url)
        self.client = make_client(settings, f"cbtest-{uuid.uuid4().hex[:10]}", clean_session=True)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect(settings.address.host, settings.address.port)
        self.client.loop_start()
        self.client.subscribe(
            [
                (f"{self.root}/signals/+/shown", 1),
                (f"{self.root}/signals/+/events", 1),
                (f"{self.root}/signals/+/command", 1),
                (f"{self.root}/control/services/+", 1),
            ]
        )
        assert subscribed.wait(10), "no SUBACK"

    def _on_message(self, _c: Any, _u: Any, message: MQTTMessage) -> None:
        levels = message.topic.split("/")
        payload = bytes(message.payload)
        if not payload:
            return
        try:
            with self.lock:
                if levels[-1] == "shown":
                    self.shown[levels[-2]] = decode_shown(payload, levels[-2])
                elif levels[-1] == "events":
                    self.events.append(decode_event(payload, levels[-2]))
                elif levels[-1] == "command":
                    found = decode_command(payload, levels[-2])
                    if isinstance(found, Command):
                        self.commands.append(found)
                elif levels[-2] == "services":
                    self.services[levels[-1]] = json.loads(payload)
        except FieldPayloadError:
            pass  # the garbage a test puts on the wire itself

    # ------------------------------------------------------------------ processes

    def start(self, *args: str, name: str) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{name}-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "citybrain.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.procs.append(proc)
        return proc

    def cabinets(self) -> subprocess.Popen[bytes]:
        return self.start(
            "cabinet",
            "run",
            *("--broker", self.url, "--net", str(self.cfg), "--topic-root", self.root),
            *("--config", str(self.config), "--client-id", f"cbtest-cab-{uuid.uuid4().hex[:6]}"),
            *("--detectors", "synthetic"),
            name="cabinets",
        )

    def serve_args(self, service: str, *extra: str) -> list[str]:
        return [
            "control",
            "serve",
            *("--broker", self.url, "--net", str(self.cfg), "--topic-root", self.root),
            *("--controller", "actuated", "--config", str(self.config)),
            *("--service-id", service, "--client-id", f"{service}-{uuid.uuid4().hex[:6]}"),
            *extra,
        ]

    def serve(self, service: str, *extra: str) -> subprocess.Popen[bytes]:
        return self.start(*self.serve_args(service, *extra), name=service)

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        k = self.procs.index(proc)
        found = list(self.tmp.glob(f"*-{k}.log"))
        return found[0].read_text(errors="replace") if found else ""

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        # leave nothing retained behind on a shared broker
        for key in SIGNALS:
            self.client.publish(shown_topic(key, self.root), b"", 1, retain=True)
        for service in list(self.services):
            self.client.publish(f"{self.root}/control/services/{service}", b"", 1, retain=True)
        time.sleep(0.3)
        self.client.disconnect()
        self.client.loop_stop()

    # ------------------------------------------------------------------ what the field says

    def wait(self, what: str, check: Callable[[], bool], timeout: float = 90.0) -> float:
        """Poll until ``check()``; the wall time it took."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            with self.lock:
                if check():
                    return time.monotonic() - start
            time.sleep(0.05)
        with self.lock:
            state = {k: (s.holder, s.mode, s.epoch) for k, s in self.shown.items()}
        raise AssertionError(f"timed out waiting for {what}; cabinets: {state}")

    def held_by(self, service: str) -> bool:
        return len(self.shown) == len(SIGNALS) and all(
            s.holder == service and s.mode == "remote" for s in self.shown.values()
        )

    def kinds(self, kind: str, service: str | None = None) -> list[CabinetEvent]:
        with self.lock:
            return [
                e
                for e in self.events
                if e.kind == kind and (service is None or e.service == service)
            ]

    def refusals(self) -> list[CabinetEvent]:
        """Refused commands, but those refused only for arriving a few milliseconds early
        (the cabinet agent times a command by its arrival: a yellow whose command came a
        little late and whose successor a little early looks short by that much)."""
        out = []
        for e in self.kinds("refused"):
            rule = e.reason.split(":")[0]
            took = re.search(r" ([\d.]+) s\b", e.reason)
            need = re.search(r"min ([\d.]+) s", e.reason)
            if rule in TIMING_RULES and took and need and float(need[1]) - float(took[1]) < 0.1:
                continue
            out.append(e)
        return out


@pytest.fixture
def field(mqtt_url: str, arterial_cfg: Path, tmp_path: Path) -> Iterator[Field]:
    f = Field(mqtt_url, arterial_cfg, tmp_path)
    try:
        yield f
    finally:
        f.close()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def test_the_service_holds_the_cabinets_resumes_after_kill_and_hands_them_back(
    field: Field,
) -> None:
    field.cabinets()
    svc = field.serve("svc-a")
    field.wait("svc-a to hold every cabinet", lambda: field.held_by("svc-a"))
    field.wait(
        "the liveness to list them",
        lambda: len(field.services.get("svc-a", {}).get("held", [])) == 5,
    )
    live = field.services["svc-a"]
    assert live["online"] and live["counts"]["held"] == 5 and live["silent"] == []
    # malformed reports on the wire do not stop it
    field.client.publish(f"{field.root}/signals/A0/shown", b"{broken", 1)
    field.client.publish(f"{field.root}/signals/A0/events", b'{"kind": "exploded"}', 1)
    time.sleep(3)
    assert svc.poll() is None
    epochs = {k: s.epoch for k, s in field.shown.items()}
    seen = len(field.events)
    # kill -9 and start again under the same id: the same leases, resumed from the reports
    _kill(svc)
    before = len(field.commands)
    svc = field.serve("svc-a")
    field.wait(
        "the restarted svc-a to command again",
        lambda: len(field.commands) > before + 10 and field.held_by("svc-a"),
    )
    field.wait("ten more seconds of commands", lambda: len(field.commands) > before + 60)
    assert field.refusals() == [], [e.reason for e in field.refusals()]
    # a cabinet that neither refused nor fell back kept its lease: the same epoch
    with field.lock:
        moved = {e.intersection for e in field.events[seen:] if e.kind in ("refused", "fallback")}
        kept = {k: s.epoch for k, s in field.shown.items() if k not in moved}
    assert kept == {k: v for k, v in epochs.items() if k not in moved}
    # a graceful stop hands every signal back at once
    seen = len(field.events)
    svc.terminate()
    assert svc.wait(20) == 0
    field.wait(
        "every cabinet to go local",
        lambda: all(s.holder is None and s.mode == "local" for s in field.shown.values()),
        timeout=20,
    )
    with field.lock:
        released = [e.intersection for e in field.events[seen:] if e.kind == "released"]
    assert sorted(released) == list(SIGNALS)
    field.wait("svc-a to say it is offline", lambda: not field.services["svc-a"]["online"])


def test_a_standby_takes_over_after_kill_9_within_the_watchdog_time(field: Field) -> None:
    field.cabinets()
    first = field.serve("svc-a")
    field.wait("svc-a to hold every cabinet", lambda: field.held_by("svc-a"))
    standby = field.serve("svc-b", "--standby")
    field.wait(
        "the standby to be denied",
        lambda: {e.intersection for e in field.events if e.kind == "denied"} == set(SIGNALS),
    )
    field.wait(
        "the standby's liveness",
        lambda: field.services.get("svc-b", {}).get("counts", {}).get("held_by_other") == 5,
    )
    assert standby.poll() is None and field.held_by("svc-a")
    _kill(first)
    took = field.wait("svc-b to hold every cabinet", lambda: field.held_by("svc-b"), timeout=60)
    # the cabinets never went to their local plans in between: within the watchdog time
    assert field.kinds("fallback") == []
    assert len(field.kinds("granted", "svc-b")) >= len(SIGNALS)
    assert field.refusals() == [], [e.reason for e in field.refusals()]
    # measured on the cabinets' clock: the first grant to svc-b after svc-a's last command
    with field.lock:
        last_a = max(c.ts for c in field.commands if c.service == "svc-a")
        grants = [e.ts for e in field.events if e.kind == "granted" and e.service == "svc-b"]
    print(f"takeover: {max(grants) - last_a:.2f} s after svc-a's last command ({took:.1f} s wall)")
    assert max(grants) - last_a < 10.0  # the cabinets' watchdog


def test_a_second_service_without_standby_is_refused_with_a_clear_message(
    field: Field,
) -> None:
    field.cabinets()
    field.serve("svc-a")
    field.wait("svc-a to hold every cabinet", lambda: field.held_by("svc-a"))
    second = subprocess.run(
        [sys.executable, "-m", "citybrain.cli", *field.serve_args("svc-b")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert second.returncode != 0
    errors = [line for line in second.stderr.splitlines() if line.startswith("citybrain: error")]
    assert len(errors) == 1, second.stderr
    assert "svc-a" in errors[0] and "--standby" in errors[0]
    assert field.held_by("svc-a")  # the first one kept its signals
    # a second service sent no command
    assert {c.service for c in field.commands} == {"svc-a"}


@pytest.mark.sumo
@pytest.mark.parametrize(
    ("net", "controller", "end_s"), [("single", "actuated", 600), ("arterial", "adaptive", 900)]
)
def test_a_lockstep_field_run_equals_the_in_process_run(
    mqtt_url: str,
    single_cfg: Path,
    arterial_cfg: Path,
    tmp_path: Path,
    net: str,
    controller: str,
    end_s: float,
) -> None:
    """``citybrain sim run --field`` with the controller in a ``control serve`` process: the
    same delay and the same lamps, second by second, as the controller in process; every
    second commanded, nothing refused."""
    from citybrain.sim.fieldloop import FieldOptions
    from citybrain.sim.runner import RunOptions, run

    cfg = single_cfg if net == "single" else arterial_cfg
    field = Field(mqtt_url, cfg, tmp_path)
    try:
        field.serve("svc-a", "--escort", "none", "--controller", controller)
        time.sleep(3)  # the service is there before the run starts: it claims in the pre-roll
        options = FieldOptions(BrokerSettings.from_url(mqtt_url), root=field.root)
        remote = run(
            cfg,
            tmp_path / "field",
            RunOptions(controller, end_s=end_s, timeline=True, field=options),
        )
    finally:
        field.close()
    alone = run(cfg, tmp_path / "alone", RunOptions(controller, end_s=end_s, timeline=True)).metrics
    report = remote.metrics.extra["field"]
    assert remote.metrics.mean_delay_s == alone.mean_delay_s
    assert remote.metrics.vehicles == alone.vehicles
    timeline = (tmp_path / "field" / "timeline.json").read_text()
    assert timeline == (tmp_path / "alone" / "timeline.json").read_text()
    signals = report["cabinets"]
    assert report["monitor_refusals"] == 0 and report["fallbacks"] == 0
    assert report["unsafe_states"] == 0 and report["silent_services"] == []
    assert report["commands_shown"] >= (end_s - 10) * signals
    assert report["holders_at_end"] == ["svc-a"]


@pytest.mark.sumo
def test_a_realtime_field_run_is_commanded(mqtt_url: str, single_cfg: Path, tmp_path: Path) -> None:
    """``--clock realtime``: one simulated second per wall second, the service on its own
    wall clock; the cabinets are commanded, latency is measured, nothing is unsafe."""
    from citybrain.sim.fieldloop import FieldOptions
    from citybrain.sim.runner import RunOptions, run

    field = Field(mqtt_url, single_cfg, tmp_path)
    try:
        field.serve("svc-a", "--escort", "none")
        time.sleep(3)
        options = FieldOptions(BrokerSettings.from_url(mqtt_url), clock="realtime", root=field.root)
        remote = run(
            single_cfg, tmp_path / "field", RunOptions("actuated", end_s=25, field=options)
        )
    finally:
        field.close()
    report = remote.metrics.extra["field"]
    assert report["unsafe_states"] == 0 and report["clock"] == "realtime"
    assert report["commands_shown"] >= 10 and report["holders_at_end"] == ["svc-a"]
    assert report["latency_ms"]["p99"] is not None


@pytest.mark.sumo
def test_a_service_follows_the_next_lockstep_run(
    mqtt_url: str, single_cfg: Path, tmp_path: Path
) -> None:
    """One ``control serve`` for two field runs, one after the other: once the first run's
    ticks have stopped, the service follows the second from its start."""
    from citybrain.field.service import RUN_ENDED_AFTER_S
    from citybrain.sim.fieldloop import FieldOptions
    from citybrain.sim.runner import RunOptions, run

    field = Field(mqtt_url, single_cfg, tmp_path)
    reports = []
    try:
        field.serve("svc-a", "--escort", "none")
        time.sleep(3)
        options = FieldOptions(BrokerSettings.from_url(mqtt_url), root=field.root)
        for k in range(2):
            result = run(
                single_cfg, tmp_path / f"run{k}", RunOptions("actuated", end_s=120, field=options)
            )
            reports.append(result.metrics.extra["field"])
            time.sleep(RUN_ENDED_AFTER_S + 1)
    finally:
        field.close()
    for report in reports:
        assert report["commands_shown"] >= 100 and report["holders_at_end"] == ["svc-a"]
        assert report["unsafe_states"] == 0 and report["monitor_refusals"] == 0
