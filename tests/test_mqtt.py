"""The shared MQTT layer (``citybrain/mqtt``): the reconnect schedule and one attempt,
client ids, configured paho clients, and who imports what (the field service takes its
MQTT from here, nothing from ``parking/``). The codec and the link:
``tests/test_mqtt_link.py``; broker URLs: ``tests/test_parking_mqtt.py``."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading

import pytest

from citybrain.mqtt.address import BrokerSettings, unique_client_id
from citybrain.mqtt.backoff import Backoff
from citybrain.mqtt.link import Refused
from citybrain.mqtt.paho import make_client


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_up_to_its_most_and_starts_over_on_reset() -> None:
    clock = FakeClock()
    b = Backoff(0.2, 1.0, clock=clock)
    assert b.due()  # the first attempt at once
    assert [b.failed() for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    assert b.retry_at == pytest.approx(101.0) and not b.due()
    clock.now = 101.0
    assert b.due()
    b.reset()
    assert b.failed() == 0.2 and b.delay == 0.4


def test_a_lost_connection_waits_without_growing_the_delay() -> None:
    clock = FakeClock()
    b = Backoff(1.0, 10.0, clock=clock)
    assert b.lost() == 1.0 and b.lost() == 1.0 and b.delay == 1.0
    assert b.retry_at == 101.0
    b.failed()
    assert b.lost() == 2.0


def test_backoff_wait_returns_when_due_or_stopped() -> None:
    b = Backoff(0.05, 0.05)
    stop = threading.Event()
    b.failed()
    assert b.wait(stop) is False  # waited 0.05 s
    assert b.due()
    b.failed()
    stop.set()
    assert b.wait(stop) is True
    with pytest.raises(ValueError):
        Backoff(-1, 1)
    with pytest.raises(ValueError):
        Backoff(1, 2, factor=0.5)


def test_an_attempt_sorts_failures_retried_from_those_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    b = Backoff(1.0, 8.0, clock=clock)
    log = logging.getLogger("test.mqtt.backoff")

    def raises(exc: BaseException) -> object:
        def connect() -> object:
            raise exc

        return connect

    with caplog.at_level(logging.WARNING, "test.mqtt.backoff"):
        assert (
            b.attempt(raises(ConnectionRefusedError("nobody there")), url="u", who="w", log=log)
            is None
        )
        assert b.retry_at == 101.0
        assert (
            b.attempt(raises(Refused(3, "server unavailable")), url="u", who="w", log=log) is None
        )
        assert b.retry_at == 102.0  # the delay grew
        with pytest.raises(Refused):
            b.attempt(raises(Refused(4, "bad user name or password")), url="u", who="w", log=log)
        with pytest.raises(ZeroDivisionError):  # not a connection failure: not retried
            b.attempt(raises(ZeroDivisionError()), url="u", who="w", log=log)
    assert b.attempt(lambda: "link", url="u", who="w", log=log) == "link"
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "cannot reach broker u: nobody there",
        "broker u refused w: server unavailable",
        "broker u refused w: bad user name or password",
    ]


def test_client_ids_and_configured_paho_clients() -> None:
    a, b = unique_client_id("citybrain-cli"), unique_client_id("citybrain-cli")
    assert a != b and a.startswith("citybrain-cli-") and len(a) == len("citybrain-cli-") + 10
    settings = BrokerSettings.from_url("mqtt://gw:secret@127.0.0.1:1")
    client = make_client(settings, "x", clean_session=True, reconnect=Backoff(1.0, 10.0))
    assert client._username == b"gw" and client._password == b"secret"
    assert (client._reconnect_min_delay, client._reconnect_max_delay) == (1, 10)
    assert settings.tls_context() is None
    tls = BrokerSettings.from_url("mqtts://127.0.0.1")
    context = tls.tls_context()
    assert context is not None and context.check_hostname
    assert make_client(tls, "y", clean_session=False)._ssl


def test_the_field_service_takes_its_mqtt_from_the_shared_layer() -> None:
    code = (
        "import json, sys, citybrain.field.service, citybrain.field_cli;"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('citybrain.'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    loaded = set(json.loads(out))
    assert "citybrain.mqtt.paho" in loaded
    assert not {m for m in loaded if m.startswith("citybrain.parking")}
