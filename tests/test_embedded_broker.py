"""The embedded amqtt broker (``citybrain/mqtt/embedded.py``), tested as itself on every run,
CI included: on a machine without Mosquitto the demo's parking part and the broker tests
run on it, so what they rely on is checked here even where Mosquitto is installed.

The broker tests that depend most on the broker's side of the contract (a delivery comes
back until it is PUBACKed, QoS 1 messages queued for an absent persistent session, kill -9
of the service and of a gateway) run again here, their ``mqtt_url`` being this module's
embedded broker; then the parking validation as the demo runs it, with no Mosquitto.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from paho.mqtt.client import Client, MQTTMessage

from citybrain.mqtt.address import BrokerSettings
from citybrain.mqtt.brokers import (
    EmbeddedBroker,
    MosquittoProcess,
    find_mosquitto,
    private_broker,
    reachable,
)
from citybrain.mqtt.paho import make_client

# Tests run again on the embedded broker, and the fixtures they use (``mqtt_url`` is
# overridden below, so ``sessions`` forgets its sessions there).
from .test_mqtt_link import test_a_delivery_comes_back_until_it_is_acked  # noqa: F401
from .test_parking_gateway import (  # noqa: F401
    test_gateway_waits_out_a_stopped_service_backlog_from_the_broker,
    test_kill9_gateway_midstream_then_restart_resends_what_was_not_acked,
)
from .test_parking_mqtt import (  # noqa: F401
    root,
    sessions,
    test_kill9_service_at_each_step_loses_nothing_and_charges_once,
    test_service_records_acks_duplicates_and_dead_letters,
    test_service_takes_backlog_queued_while_it_was_down,
    test_sink_failure_leaves_the_read_unacked_until_it_is_recorded,
)


@pytest.fixture(scope="module")
def mqtt_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with EmbeddedBroker(tmp_path_factory.mktemp("amqtt")) as broker:
        yield broker.url


def test_without_mosquitto_the_private_broker_is_the_embedded_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CITYBRAIN_NO_MOSQUITTO", "1")
    assert find_mosquitto() is None
    with pytest.raises(FileNotFoundError):
        MosquittoProcess(tmp_path / "m")
    broker = private_broker(tmp_path / "b")
    assert isinstance(broker, EmbeddedBroker) and broker.kind == "amqtt"
    with broker:
        first = broker.pid
        assert reachable("127.0.0.1", broker.port)
        broker.restart()
        assert broker.pid != first and reachable("127.0.0.1", broker.port)
        broker.kill()
        assert broker.pid is None and not reachable("127.0.0.1", broker.port)
        broker.start()
        assert reachable("127.0.0.1", broker.port)
    assert not reachable("127.0.0.1", broker.port)
    monkeypatch.setenv("CITYBRAIN_NO_MOSQUITTO", "0")
    if find_mosquitto() is not None:
        assert isinstance(private_broker(tmp_path / "c"), MosquittoProcess)


def test_a_retained_message_reaches_a_later_subscriber(mqtt_url: str) -> None:
    settings = BrokerSettings.from_url(mqtt_url)
    topic = f"cbtest/{uuid.uuid4().hex[:10]}/status"
    pub = make_client(settings, f"pub-{uuid.uuid4().hex[:8]}", clean_session=True)
    pub.connect(settings.address.host, settings.address.port)
    pub.loop_start()
    try:
        pub.publish(topic, b"up", qos=1, retain=True).wait_for_publish(timeout=5)
    finally:
        pub.disconnect()
        pub.loop_stop()
    got: list[tuple[bytes, bool]] = []
    arrived = threading.Event()

    def on_message(_c: Client, _u: object, message: MQTTMessage) -> None:
        got.append((bytes(message.payload), bool(message.retain)))
        arrived.set()

    sub = make_client(settings, f"sub-{uuid.uuid4().hex[:8]}", clean_session=True)
    sub.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    sub.on_message = on_message
    sub.connect(settings.address.host, settings.address.port)
    sub.loop_start()
    try:
        assert arrived.wait(5), "the retained message did not arrive"
        assert got == [(b"up", True)]
        sub.publish(topic, b"", qos=1, retain=True).wait_for_publish(timeout=5)  # clear it
    finally:
        sub.disconnect()
        sub.loop_stop()


@pytest.mark.sumo
def test_parking_validation_runs_on_the_embedded_broker_without_mosquitto(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``citybrain demo`` does for parking on a machine with Python only."""
    from dataclasses import replace

    from citybrain.sim.parking_validate import DEFAULT_CAMERAS, run_parking_validation

    monkeypatch.setenv("CITYBRAIN_NO_MOSQUITTO", "1")
    run = run_parking_validation(
        tmp_path / "out",
        seed=5,
        vehicles=10,
        cameras=replace(DEFAULT_CAMERAS, unread_rate=0.06, seed=5),
        progress=False,
        timeout_s=120,
    )
    assert run.report.ok, [m.to_json() for m in run.report.mismatches]
    n = run.report.counts()
    assert n["settled_ok"] == n["settleable"] > 0 and n["unreadable"] >= 1
    assert run.report.charged_cents == run.report.expected_cents
    transport = run.report.extra["transport"]
    assert transport["broker"] == "embedded amqtt"
    assert transport["ledger_outcomes"].get("dead_letter", 0) == 0
