"""The field service: the wire contract, its logic, the sim/field shared step, and a real broker.

The broker (``tests/brokers.py``): ``CITYBRAIN_TEST_MQTT_URL`` or ``mqtt://127.0.0.1:1883``
when reachable; else, with CI=true, the tests fail; else a private Mosquitto is started,
and without one the embedded amqtt broker.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.client import MQTTMessage

from citybrain.cli import main
from citybrain.control.corridor import EscortRequest
from citybrain.control.drive import DriveStep, SignalDriver, apply_decision
from citybrain.control.envelope import EnvelopeTiming, SafetyEnvelope
from citybrain.control.fixed import FixedTimeController
from citybrain.control.port import Decision, GpsFix, PhaseRequest, Readings
from citybrain.errors import ConfigError
from citybrain.field.core import FieldCore
from citybrain.field.protocol import (
    CameraReading,
    Command,
    DetectorReport,
    EscortCall,
    EscortCancel,
    EscortStatus,
    FieldPayloadError,
    LoopReading,
    clock_topic,
    command_topic,
    decode_command,
    decode_detectors,
    decode_escort,
    decode_gps,
    decode_status,
    detectors_topic,
    encode_call,
    encode_cancel,
    encode_detectors,
    encode_gps,
    encode_status,
    events_topic,
    gps_topic,
    parse_topic,
    requests_topic,
    service_topic,
    shown_topic,
    subscriptions,
)
from citybrain.field.service import ScaledClock, ServiceStats, load_core, run_service
from citybrain.mqtt.address import BrokerSettings
from citybrain.mqtt.paho import make_client
from citybrain.settings import Settings

from .brokers import shared_broker

# the single scenario's side road, southbound through A0, and its main road, eastbound
SOUTH = ("top0A0", "top0A0.240.00", "A0bottom0")
EAST = ("left0A0", "left0A0.240.00", "A0right0")

# ------------------------------------------------------------------------ the wire contract


def test_topics() -> None:
    root = "cbtest/x"
    assert detectors_topic("A0", root) == "cbtest/x/signals/A0/detectors"
    assert shown_topic("A0") == "citybrain/signals/A0/shown"
    assert parse_topic("cbtest/x/signals/A0/detectors", root) == ("detectors", "A0")
    assert parse_topic(shown_topic("A0", root), root) == ("shown", "A0")
    assert parse_topic(events_topic("A0", root), root) == ("events", "A0")
    assert parse_topic(gps_topic("amb 1", root), root) == ("gps", "amb 1")
    assert parse_topic(requests_topic(root), root) == ("requests", "")
    assert parse_topic(service_topic("svc-2", root), root) == ("service", "svc-2")
    assert parse_topic(clock_topic(root), root) == ("clock", "")
    assert parse_topic("cbtest/x/signals/A0/state", root) is None  # the old open-loop topic
    assert parse_topic(command_topic("A0", root), root) is None  # services do not read it
    assert parse_topic("elsewhere/signals/A0/detectors", root) is None
    for bad in ("", "a/b", "a+", "#"):
        with pytest.raises(ValueError):
            shown_topic(bad)
    # every signal by wildcard, or a shard's signals by name
    topics = dict(subscriptions(root))
    assert topics[f"{root}/signals/+/shown"] == 1 and topics[f"{root}/signals/+/detectors"] == 0
    assert topics[f"{root}/control/services/+"] == 1 and topics[clock_topic(root)] == 1
    named = dict(subscriptions(root, ("A0", "B0")))
    assert {shown_topic("B0", root), events_topic("A0", root)} <= named.keys()
    assert not any("+" in t for t in named if "/signals/" in t)


def test_round_trips() -> None:
    report = DetectorReport(
        "A0",
        1767225600.5,
        {"cb_s_l_0": LoopReading(2, 0.375), "cb_u_l_0": LoopReading(0, 0.0)},
        {"cb_c_l_0": CameraReading(7, 4)},
    )
    assert decode_detectors(encode_detectors(report), "A0") == report
    fix = GpsFix("amb1", 1767225601.0, 512.25, -3.5, 13.9)
    assert decode_gps(encode_gps(fix), "amb1") == fix
    call = EscortCall("amb1", ("e1", "e2", "e3"), 3, 1767225602.0)
    assert decode_escort(encode_call(call)) == call
    assert decode_escort(encode_call(EscortCall("amb1", ("e1",)))) == EscortCall("amb1", ("e1",))
    cancel = EscortCancel("amb1", 1767225603.0)
    assert decode_escort(encode_cancel(cancel)) == cancel
    status = EscortStatus("amb1", 1767225605.0, "active", ("A0", "B0"))
    assert decode_status(encode_status(status)) == status
    # the documented shape, field by field
    assert json.loads(encode_call(call)) == {
        "vehicle": "amb1",
        "route": ["e1", "e2", "e3"],
        "priority": 3,
        "ts": 1767225602.0,
    }


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b"\xff", ""),
        (b"{not json", ""),
        (b"[1, 2]", ""),
        (b'{"loops": {}}', "ts"),
        (b'{"ts": "now"}', "ts"),
        (b'{"ts": NaN}', ""),
        (b'{"ts": 1, "loops": []}', "loops"),
        (b'{"ts": 1, "loops": {"d": 3}}', "loops.d"),
        (b'{"ts": 1, "loops": {"d": {"occupancy": 0.1}}}', "loops.d.count"),
        (b'{"ts": 1, "loops": {"d": {"count": -1, "occupancy": 0.1}}}', "loops.d.count"),
        (b'{"ts": 1, "loops": {"d": {"count": true, "occupancy": 0.1}}}', "loops.d.count"),
        (b'{"ts": 1, "loops": {"d": {"count": 1, "occupancy": 1.5}}}', "loops.d.occupancy"),
        (b'{"ts": 1, "cameras": {"c": {"count": 2}}}', "cameras.c.queue"),
    ],
)
def test_bad_detector_messages(payload: bytes, field: str) -> None:
    with pytest.raises(FieldPayloadError) as err:
        decode_detectors(payload, "A0")
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: " if field else "")


COUNTS = (0, 3, 2.0, 2.5, -1, True, "1", None)
"""Loop and camera counts for the property below (None: the field is missing)."""
OCCUPANCIES = (0.0, 0.5, 1, 0, 1.5, -0.25, True, "x", None)


def _expected_detectors(
    loops: list[tuple[Any, Any]], cameras: list[tuple[Any, Any]]
) -> tuple[dict[str, LoopReading], dict[str, CameraReading]] | str:
    """The contract, written out: the readings, or the first offending field."""

    def count(value: Any, path: str) -> int | str:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if value is None or isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return path
        return value

    out_loops: dict[str, LoopReading] = {}
    for k, (c, o) in enumerate(loops):
        path = f"loops.d{k}"
        if o is None or isinstance(o, bool) or not isinstance(o, int | float):
            return f"{path}.occupancy"
        if not 0.0 <= o <= 1.0:
            return f"{path}.occupancy"
        n = count(c, f"{path}.count")
        if isinstance(n, str):
            return n
        out_loops[f"d{k}"] = LoopReading(n, float(o))
    out_cameras: dict[str, CameraReading] = {}
    for k, (c, q) in enumerate(cameras):
        path = f"cameras.c{k}"
        n, m = count(c, f"{path}.count"), count(q, f"{path}.queue")
        if isinstance(n, str):
            return n
        if isinstance(m, str):
            return m
        out_cameras[f"c{k}"] = CameraReading(n, m)
    return out_loops, out_cameras


@given(
    loops=st.lists(st.tuples(st.sampled_from(COUNTS), st.sampled_from(OCCUPANCIES)), max_size=4),
    cameras=st.lists(st.tuples(st.sampled_from(COUNTS), st.sampled_from(COUNTS)), max_size=3),
)
def test_detector_messages_are_judged_field_by_field(
    loops: list[tuple[Any, Any]], cameras: list[tuple[Any, Any]]
) -> None:
    """The decoder's quick path for well-formed readings takes exactly what the rules take."""

    def entry(names: tuple[str, str], values: tuple[Any, Any]) -> dict[str, Any]:
        return {n: v for n, v in zip(names, values, strict=True) if v is not None}

    payload = json.dumps(
        {
            "ts": 5.0,
            "loops": {f"d{k}": entry(("count", "occupancy"), v) for k, v in enumerate(loops)},
            "cameras": {f"c{k}": entry(("count", "queue"), v) for k, v in enumerate(cameras)},
        }
    ).encode()
    expected = _expected_detectors(loops, cameras)
    if isinstance(expected, str):
        with pytest.raises(FieldPayloadError) as err:
            decode_detectors(payload, "A0")
        assert err.value.field == expected
    else:
        report = decode_detectors(payload, "A0")
        assert (dict(report.loops), dict(report.cameras)) == expected
        for reading in report.loops.values():
            assert type(reading.count) is int and type(reading.occupancy) is float


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b'{"ts": 1, "x": 0, "y": 0, "speed_mps": 1}', "vehicle"),
        (b'{"vehicle": "other", "ts": 1, "x": 0, "y": 0, "speed_mps": 1}', "vehicle"),
        (b'{"vehicle": "amb", "ts": 1, "y": 0, "speed_mps": 1}', "x"),
        (b'{"vehicle": "amb", "ts": 1, "x": 0, "y": 0, "speed_mps": -2}', "speed_mps"),
    ],
)
def test_bad_gps(payload: bytes, field: str) -> None:
    with pytest.raises(FieldPayloadError) as err:
        decode_gps(payload, "amb")
    assert err.value.field == field


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b'{"route": ["a"]}', "vehicle"),
        (b'{"vehicle": "a/b", "route": ["a"]}', "vehicle"),
        (b'{"vehicle": "amb"}', "route"),
        (b'{"vehicle": "amb", "route": []}', "route"),
        (b'{"vehicle": "amb", "route": ["a", 3]}', "route[1]"),
        (b'{"vehicle": "amb", "route": ["a"], "priority": "high"}', "priority"),
        (b'{"vehicle": "amb", "route": ["a"], "ts": "x"}', "ts"),
        (b'{"vehicle": "amb", "cancel": "yes"}', "cancel"),
    ],
)
def test_bad_escort_messages(payload: bytes, field: str) -> None:
    with pytest.raises(FieldPayloadError) as err:
        decode_escort(payload)
    assert err.value.field == field


# ------------------------------------------------------------------------ the core


def _report(core: FieldCore, x_id: str, ts: float, counts: dict[str, int]) -> bytes:
    layout = core.layout
    loops = {
        d.id: LoopReading(counts.get(d.id, 0), 0.5 if counts.get(d.id) else 0.0)
        for d in layout.loops
        if d.intersection == x_id
    }
    cams = {
        d.id: CameraReading(counts.get(d.id, 0), 0)
        for d in layout.cameras
        if d.intersection == x_id
    }
    return encode_detectors(DetectorReport(x_id, ts, loops, cams))


def test_core_assembles_one_reading_per_second(single_cfg: Path) -> None:
    core = load_core(single_cfg, "actuated", root="r")
    seen: list[Readings] = []
    base = core.escort.base
    decide = base.decide

    def spy(readings: Readings) -> Decision:
        seen.append(readings)
        return decide(readings)

    base.decide = spy  # type: ignore[method-assign]
    loop = core.layout.loops[0]
    cam = core.layout.cameras[0]
    topic = detectors_topic(loop.intersection, "r")
    t = 1000.0
    core.handle(topic, _report(core, loop.intersection, t - 0.5, {loop.id: 1, cam.id: 3}), t - 0.5)
    core.handle(topic, _report(core, loop.intersection, t - 0.2, {loop.id: 2}), t - 0.2)
    core.handle(topic, _report(core, loop.intersection, t - 9, {loop.id: 5}), t - 0.1)  # stale
    out = core.tick(t)
    assert seen[-1].time_s == t
    assert seen[-1].loop_count[0] == 3  # counts add up within the second
    assert seen[-1].camera_count[0] == 0  # cameras: the latest message
    assert core.counts["stale"] == 1
    # no cabinet has reported: the controller decides, nothing is commanded or claimed
    assert not [m for m in out if m.topic.endswith("/command")]
    assert core.states[loop.intersection] and core.statuses[loop.intersection] == "unknown"
    core.tick(t + 1)  # no message: no counts
    assert seen[-1].loop_count.sum() == 0 and seen[-1].time_s == t + 1
    # a detector of another intersection, or an unknown one: the message is refused whole
    bad = json.dumps({"ts": t, "loops": {"cb_nope": {"count": 1, "occupancy": 0}}}).encode()
    with pytest.raises(FieldPayloadError, match=r"^loops\.cb_nope: "):
        core.handle(topic, bad, t + 1.5)
    with pytest.raises(FieldPayloadError):
        core.handle(detectors_topic("Z9", "r"), encode_detectors(DetectorReport("Z9", t)), t)
    assert core.counts["rejected"] == 2


def test_core_escort_requests(single_cfg: Path) -> None:
    core = load_core(single_cfg, "plan", root="r")
    t = 5000.0
    (status,) = core.handle(requests_topic("r"), encode_call(EscortCall("amb", SOUTH)), t)
    got = decode_status(status.payload)
    assert (got.status, got.signals) == ("active", ("A0",))
    (status,) = core.handle(requests_topic("r"), encode_call(EscortCall("x", ("nope",))), t)
    assert decode_status(status.payload).status == "rejected"
    old = EscortCall("y", SOUTH, ts=t - 3600)
    (status,) = core.handle(requests_topic("r"), encode_call(old), t)
    assert decode_status(status.payload).reason == "request too old"
    (status,) = core.handle(requests_topic("r"), encode_cancel(EscortCancel("amb")), t + 1)
    assert decode_status(status.payload).status == "cancelled"
    assert not core.escort.escorts


def test_core_refuses_a_controller_inside_the_signal(single_cfg: Path) -> None:
    with pytest.raises(ConfigError, match="runs inside the signal"):
        load_core(single_cfg, "sumo-actuated")
    with pytest.raises(ConfigError, match="escort mode"):
        load_core(single_cfg, "plan", escort="sideways")


# ------------------------------------------------------------------------ one step, two worlds


def test_apply_decision_matches_the_envelopes(single_cfg: Path) -> None:
    core = load_core(single_cfg, "plan")
    xs = core.layout.intersections
    timing = EnvelopeTiming()
    by_hand = {x.id: SafetyEnvelope(x, timing, 0.0) for x in xs}
    driver = SignalDriver(FixedTimeController(core.layout), xs, timing, 0.0)
    x = xs[0]
    for t in range(120):
        phase = (t // 20) % len(x.phases)
        decision = Decision((PhaseRequest(x.id, phase, hold=t > 100),))
        outputs = apply_decision(decision, driver.envelopes, xs, float(t))
        assert outputs[0].state == by_hand[x.id].step(float(t), phase, hold=t > 100)
        assert outputs[0].hold == (t > 100)


@pytest.mark.sumo
@pytest.mark.parametrize("controller", ["actuated", "maxpressure"])
def test_sim_and_field_show_the_same_states(
    single_cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, controller: str
) -> None:
    from citybrain.sim.runner import RunOptions, run

    recorded: list[tuple[Readings, dict[str, str]]] = []
    original = SignalDriver.step

    def record(self: SignalDriver, readings: Readings) -> DriveStep:
        step = original(self, readings)
        copy = Readings(
            readings.time_s,
            readings.loop_count.copy(),
            readings.loop_occupancy.copy(),
            readings.camera_count.copy(),
            readings.camera_queue.copy(),
            {},
            readings.gps,
        )
        recorded.append((copy, dict(step.states)))
        return step

    monkeypatch.setattr(SignalDriver, "step", record)
    run(single_cfg, tmp_path / "run", RunOptions(controller, seed=3, end_s=600.0))
    monkeypatch.undo()
    assert len(recorded) >= 600
    assert any(r.loop_count.sum() for r, _ in recorded)

    core = load_core(single_cfg, controller, root="r")
    layout = core.layout
    changes = 0
    for readings, wanted in recorded:
        t = readings.time_s
        for x in layout.intersections:
            loops = {
                d.id: LoopReading(int(readings.loop_count[i]), float(readings.loop_occupancy[i]))
                for i, d in enumerate(layout.loops)
                if d.intersection == x.id
            }
            cams = {
                d.id: CameraReading(int(readings.camera_count[i]), int(readings.camera_queue[i]))
                for i, d in enumerate(layout.cameras)
                if d.intersection == x.id
            }
            payload = encode_detectors(DetectorReport(x.id, t, loops, cams))
            core.handle(detectors_topic(x.id, "r"), payload, t)
        before = dict(core.states)
        core.tick(t)
        assert dict(core.states) == wanted, f"at {t:g} s"
        changes += before != dict(core.states)
    assert changes > 10  # the controller did switch phases


# ------------------------------------------------------------------------ a real broker


@pytest.fixture(scope="module")
def mqtt_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with shared_broker(tmp_path_factory.mktemp("broker")) as url:
        yield url


class Collector:
    """Subscribes to topic filters and keeps every message (topic, payload, arrival)."""

    def __init__(self, url: str, *filters: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        settings = BrokerSettings.from_url(url)
        self.client = make_client(settings, f"cbtest-{uuid.uuid4().hex[:10]}", clean_session=True)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.connect(settings.address.host, settings.address.port)
        self.client.loop_start()
        self.client.subscribe([(f, 1) for f in filters])
        assert self.subscribed.wait(10), "no SUBACK"

    def _on_message(self, _c: Any, _u: Any, message: MQTTMessage) -> None:
        with self.lock:
            self.messages.append((message.topic, bytes(message.payload)))

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain)

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class NoDetectors:
    """A cabinet's detector inputs when the test publishes the readings itself."""

    def read(self, intersection: str, now_s: float) -> tuple[None, None]:
        return None, None


class Lamps:
    """Every lamp change of the cabinets, (time, intersection, state)."""

    def __init__(self) -> None:
        self.shown: list[tuple[float, str, str]] = []

    def show(self, intersection: str, state: str, now_s: float) -> None:
        self.shown.append((now_s, intersection, state))


def test_field_service_escorts_an_ambulance(single_cfg: Path, mqtt_url: str) -> None:
    from citybrain.field.cabinet_agent import load_cabinets, run_cabinets

    root = f"cbtest/{uuid.uuid4().hex[:10]}"
    core = load_core(single_cfg, "actuated", escort="corridor", root=root)
    (x,) = core.layout.intersections
    corridors = {r: core.escort.corridor_of(EscortRequest("amb", r)) for r in (SOUTH, EAST)}
    assert all(len(c.signals) == 1 for c in corridors.values())
    clock = ScaledClock(rate=2.0)
    broker = BrokerSettings.from_url(mqtt_url)
    host = load_cabinets(single_cfg, Settings(), clock(), root=root)
    lamps = Lamps()
    stop, ready, cabinets_ready = threading.Event(), threading.Event(), threading.Event()
    stop_cabinets = threading.Event()
    result: list[ServiceStats] = []
    client_id = f"cbtest-control-{uuid.uuid4().hex[:8]}"
    threads = [
        threading.Thread(
            target=lambda: result.append(
                run_service(core, broker, client_id=client_id, stop=stop, clock=clock, ready=ready)
            ),
            daemon=True,
        ),
        threading.Thread(
            target=run_cabinets,
            args=(host, NoDetectors(), lamps, broker),
            kwargs={
                "client_id": f"cbtest-cab-{uuid.uuid4().hex[:8]}",
                "stop": stop_cabinets,
                "clock": clock,
                "ready": cabinets_ready,
            },
            daemon=True,
        ),
    ]
    watch = Collector(
        mqtt_url, f"{root}/signals/+/command", f"{root}/signals/+/shown", f"{root}/escort/+/status"
    )
    for thread in threads:
        thread.start()
    try:
        assert ready.wait(15) and cabinets_ready.wait(15), "no subscription"
        deadline = time.monotonic() + 30
        while host.cabinets[x.id].mode != "remote" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert host.cabinets[x.id].holder == "citybrain-control", "the service took no lease"
        rng = np.random.default_rng(7)
        t0 = math.floor(clock()) + 1
        speed, start_k = 12.0, 3
        route, corridor = SOUTH, corridors[SOUTH]
        (sig,) = corridor.signals
        s0 = sig.stop_m - 180.0
        for k in range(32):
            t = t0 + k
            while clock() < t + 0.3:
                time.sleep(0.01)
            counts = {d.id: int(rng.integers(0, 2)) for d in core.layout.loops}
            watch.publish(detectors_topic(x.id, root), _report(core, x.id, t, counts))
            if k == 2:
                # escort the road that is not green now: the signal has to change for it
                if host.cabinets[x.id].phase in sig.phases:
                    route, corridor = EAST, corridors[EAST]
                    (sig,) = corridor.signals
                    s0 = sig.stop_m - 180.0
                watch.publish(requests_topic(root), encode_call(EscortCall("amb", route)), 1)
                watch.publish(detectors_topic(x.id, root), b'{"ts": "garbage"}')
            if k >= start_k:
                s = s0 + speed * (k - start_k)
                px, py = corridor.line.point_at(s)
                fix = GpsFix("amb", t, px + rng.normal(0, 4), py + rng.normal(0, 4), speed)
                watch.publish(gps_topic("amb", root), encode_gps(fix))
        time.sleep(0.5)
    finally:
        stop.set()  # the service first: it hands the signal back
        threads[0].join(15)
        time.sleep(0.5)
        stop_cabinets.set()
        threads[1].join(15)
        watch.close()
    assert not any(thread.is_alive() for thread in threads) and result
    stats = result[0]
    assert stats.rejected >= 1 and stats.ticks >= 30
    commands = sorted(
        (
            m
            for p in watch.on(command_topic(x.id, root))
            if isinstance(m := decode_command(p, x.id), Command)
        ),
        key=lambda c: c.ts,
    )
    assert len(commands) >= 30
    # safe: the cabinet showed nothing unsafe, never fell back (a refusal is possible: the
    # cabinet times a command by its arrival, and network jitter can make a yellow look a
    # millisecond short; the service then releases the lease and claims it again)
    totals = host.totals()
    assert (totals.unsafe, totals.fallbacks) == (0, 0)
    assert totals.commands >= 30
    # the stop released the lease: the cabinet runs its own plan again
    assert host.cabinets[x.id].holder is None
    # the signal changed for the ambulance: its movement is green and held well before it
    # reaches the stop line, and stays green until it is there
    arrive = t0 + start_k + 180.0 / speed
    requested = [c for c in commands if t0 + 2 <= c.ts <= t0 + 3]
    timeline = [(c.ts - t0, c.state, c.phase, c.hold) for c in commands]
    assert requested and requested[0].phase not in sig.phases, timeline
    green = [c for c in commands if all(c.state[i] in "Gg" for i in sig.links)]
    held = [c for c in green if c.hold and c.phase in sig.phases and c.ts > t0 + 2]
    assert held and held[0].ts < arrive - 3, timeline
    last = [c for c in commands if held[0].ts <= c.ts <= arrive - 1]
    assert last and all(all(c.state[i] in "Gg" for i in sig.links) for c in last)
    if totals.refusals == 0:  # else the lamps lag the commands by the resynchronisation
        shown = [(t, st) for t, key, st in lamps.shown if held[0].ts <= t <= arrive - 1]
        assert all(all(st[i] in "Gg" for i in sig.links) for _, st in shown)
    statuses = [decode_status(p).status for p in watch.on(f"{root}/escort/amb/status")]
    assert statuses[0] == "active" and "ended" in statuses
    # leave nothing retained behind on a shared broker
    cleaner = Collector(mqtt_url, f"{root}/#")
    cleaner.publish(shown_topic(x.id, root), b"", 1, retain=True)
    cleaner.publish(service_topic("citybrain-control", root), b"", 1, retain=True)
    time.sleep(0.2)
    cleaner.close()


def test_escort_commands_publish_requests(
    mqtt_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The commands publish the documented requests and wait for the answer (a stand-in
    service here, answering every request ``active`` and every cancellation)."""
    root = f"cbtest/{uuid.uuid4().hex[:10]}"
    watch = Collector(mqtt_url, requests_topic(root))

    def answer(_c: Any, _u: Any, message: MQTTMessage) -> None:
        watch._on_message(_c, _u, message)
        got = decode_escort(bytes(message.payload))
        kind = "cancelled" if isinstance(got, EscortCancel) else "active"
        status = EscortStatus(got.vehicle, time.time(), kind, ("A0", "B1"))
        watch.publish(f"{root}/escort/{got.vehicle}/status", encode_status(status), qos=1)

    watch.client.on_message = answer
    try:
        base = ["--broker", mqtt_url, "--topic-root", root, "--vehicle", "amb7"]
        assert main(["escort", "request", *base, "--route", "e1,e2, e3", "--priority", "2"]) == 0
        assert capsys.readouterr().out == "escorting amb7: A0, B1\n"
        assert main(["escort", "cancel", *base]) == 0
        assert capsys.readouterr().out == "cancelled the escort of amb7\n"
    finally:
        watch.close()
    call, cancel = (decode_escort(p) for p in watch.on(requests_topic(root)))
    assert isinstance(call, EscortCall) and isinstance(cancel, EscortCancel)
    assert (call.vehicle, call.route, call.priority) == ("amb7", ("e1", "e2", "e3"), 2)
    assert call.ts is not None and abs(call.ts - time.time()) < 60
    assert cancel.vehicle == "amb7"


def test_escort_command_without_broker(capsys: pytest.CaptureFixture[str]) -> None:
    with contextlib.closing(__import__("socket").socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = main(["escort", "cancel", "--broker", f"mqtt://127.0.0.1:{port}", "--vehicle", "a"])
    assert code == 2
    assert "cannot reach the broker" in capsys.readouterr().err
