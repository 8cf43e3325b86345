"""Cabinets on a real broker: a holder claims, commands and goes silent; the cabinet agent
hands back to the local plan; its lamps never break a rule."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from citybrain.control.envelope import SafetyEnvelope
from citybrain.errors import ConfigError
from citybrain.field.cabinet import CabinetSettings
from citybrain.field.cabinet_agent import load_cabinets, read_logins, run_cabinets
from citybrain.field.protocol import (
    Claim,
    Command,
    decode_event,
    decode_shown,
    encode_command,
)
from citybrain.field.service import ScaledClock
from citybrain.field.shards import Shard, select_signals
from citybrain.field.simfield import LampLog, SyntheticDetectors
from citybrain.mqtt.address import BrokerSettings
from citybrain.settings import Settings
from citybrain.sim.monitor import SignalMonitor

from .brokers import shared_broker
from .test_field import Collector

RATE = 4.0
"""The cabinets' and the test's clock run this many times faster than the wall."""


@pytest.fixture(scope="module")
def mqtt_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with shared_broker(tmp_path_factory.mktemp("broker")) as url:
        yield url


class MonitoredLamps(LampLog):
    """Lamps watched by an independent monitor."""

    def __init__(self, monitor: SignalMonitor) -> None:
        super().__init__()
        self.monitor = monitor
        self.lock = threading.Lock()

    def show(self, intersection: str, state: str, now_s: float) -> None:
        with self.lock:
            super().show(intersection, state, now_s)
            self.monitor.observe(now_s, intersection, state)


def _wait(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_a_cabinet_obeys_its_holder_then_falls_back_when_it_goes_silent(
    arterial_cfg: Path, mqtt_url: str
) -> None:
    root = f"cbt{uuid.uuid4().hex[:8]}"
    clock = ScaledClock(RATE)
    settings = dataclasses.replace(
        Settings(), cabinet=CabinetSettings(watchdog_s=4.0, handover_after_s=2.0)
    )
    host = load_cabinets(arterial_cfg, settings, clock(), root=root)
    xid = sorted(host.cabinets)[0]
    cab = host.cabinets[xid]
    monitor = SignalMonitor([c.x for c in host.cabinets.values()], settings.envelope)
    lamps = MonitoredLamps(monitor)
    detectors = SyntheticDetectors({k: c.layout for k, c in host.cabinets.items()}, 600.0)
    watcher = Collector(mqtt_url, f"{root}/signals/#")
    stop, ready = threading.Event(), threading.Event()
    broker = BrokerSettings.from_url(mqtt_url)
    agent = threading.Thread(
        target=run_cabinets,
        args=(host, detectors, lamps, broker),
        kwargs={"stop": stop, "clock": clock, "ready": ready, "client_id": root},
    )
    agent.start()
    try:
        assert ready.wait(10)
        shown_topic = f"{root}/signals/{xid}/shown"
        events_topic = f"{root}/signals/{xid}/events"
        command_topic = f"{root}/signals/{xid}/command"
        _wait(lambda: watcher.on(f"{root}/signals/{xid}/detectors"))
        # claim until granted (a claim in a change interval waits for the green)
        watcher.publish(command_topic, encode_command(Claim(xid, "svc", clock())), qos=1)
        _wait(lambda: any(decode_event(p, xid).kind == "granted" for p in watcher.on(events_topic)))
        _wait(lambda: any(decode_shown(p, xid).holder == "svc" for p in watcher.on(shown_topic)))
        shown = [decode_shown(p, xid) for p in watcher.on(shown_topic)]
        granted = next(s for s in shown if s.holder == "svc")
        assert granted.phase is not None and granted.green_since is not None
        envelope = SafetyEnvelope.resume(
            cab.x, settings.envelope, granted.phase, granted.green_since
        )
        other = (granted.phase + 1) % len(cab.x.phases)
        # command for 40 (fast) seconds, asking for the other phase now and then
        t = clock()
        for k in range(40):
            t = max(t + 1.0, clock())
            state = envelope.step(t, other if k % 15 == 5 else None)
            cmd = Command(xid, "svc", granted.epoch, t, state, envelope.phase)
            watcher.publish(command_topic, encode_command(cmd), qos=1)
            while clock() < t + 1.0:
                time.sleep(0.01)
        _wait(lambda: cab.stats.commands >= 35)
        assert cab.mode == "remote" and cab.stats.refusals == 0
        # silence: the watchdog hands the signal back to its local plan
        _wait(
            lambda: any(decode_event(p, xid).kind == "fallback" for p in watcher.on(events_topic))
        )
        _wait(lambda: decode_shown(watcher.on(shown_topic)[-1], xid).mode == "local")
        last = decode_shown(watcher.on(shown_topic)[-1], xid)
        assert last.holder is None and last.fallbacks == 1
        kinds = [decode_event(p, xid).kind for p in watcher.on(events_topic)]
        assert kinds == ["granted", "remote", "fallback"]
        time.sleep(20 / RATE)  # the local plan runs on
    finally:
        stop.set()
        agent.join(10)
        watcher.close()
    assert host.totals().unsafe == 0
    with lamps.lock:
        assert [v for v in monitor.violations if v.rule != "long_green"] == []
        assert lamps.changes > 10


def test_shards_split_the_signals_in_contiguous_blocks() -> None:
    ids = [f"J{k:02d}" for k in range(10)]
    parts = [Shard(i, 3).of(reversed(ids)) for i in range(3)]
    assert parts == [tuple(ids[0:4]), tuple(ids[4:7]), tuple(ids[7:10])]
    assert Shard.parse("1/3") == Shard(1, 3)
    for bad in ("3/3", "a/2", "1", "0/0"):
        with pytest.raises(ConfigError, match="shard"):
            Shard.parse(bad)
    assert select_signals(ids, ["J03", "J01"]) == ("J03", "J01")
    with pytest.raises(ConfigError, match="no signal 'X9' in the net"):
        select_signals(ids, ["X9"])
    with pytest.raises(ConfigError, match="empty"):
        select_signals(ids[:1], shard=Shard(1, 2))


def test_credentials_are_read_per_cabinet(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    path.write_text("citybrain-service:s3\ncab-A0:pw0\ncab-B1:pw1\ngw-lot-a:x\n")
    logins = read_logins(path)
    assert {k: v.username for k, v in logins.items()} == {"A0": "cab-A0", "B1": "cab-B1"}
    path.write_text("cab-A0\n")
    with pytest.raises(ConfigError, match="credentials:1: expected user:password"):
        read_logins(path)


def test_cabinet_run_fails_in_one_line_on_bad_input(single_cfg: Path, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "citybrain.cli",
                "cabinet",
                "run",
                "--net",
                str(single_cfg),
                *("--detectors", "synthetic"),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )

    for args, message in (
        (("--signals", "NOPE"), "no signal 'NOPE' in the net"),
        (("--shard", "2/2"), "shard '2/2'"),
        (("--broker", "http://x"), "broker URL must start with mqtt://"),
        (("--flow-vph", "nan"), "--flow-vph must be a number >= 0"),
        (("--ca-file", "/nonexistent/ca.crt"), "no CA certificate file"),
    ):
        done = run(*args)
        assert done.returncode != 0
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], done.stderr
    creds = tmp_path / "credentials"
    creds.write_text("citybrain-service:x\n")
    done = run("--credentials", str(creds))
    assert done.returncode != 0 and "no cab-A0 line" in done.stderr
