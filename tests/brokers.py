"""The MQTT brokers the tests talk to.

- ``shared_broker``: the machine's broker (``CITYBRAIN_TEST_MQTT_URL``, by default
  ``mqtt://127.0.0.1:1883``) when it answers; else a private one, Mosquitto where its
  binary is found, else the embedded amqtt broker from PyPI (a fresh machine with Python
  only). ``CITYBRAIN_TEST_MQTT_URL=private`` skips the machine's broker;
  ``CITYBRAIN_NO_MOSQUITTO=1`` acts as if no Mosquitto were installed. Together they run
  the broker tests on the embedded broker.
- ``own_broker``: a private broker for a test that restarts or kills it (Mosquitto, else
  the embedded one).
- ``require_mosquitto``: for the tests of Mosquitto-only features (the shipped ACL and
  password files, its TLS listener): they skip without the binary.

Under ``CI=true`` Mosquitto is what the tests use: without the ``mosquitto`` binary, or
without a broker answering at the shared URL, the tests that need a broker fail. The
embedded broker is never used there.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from citybrain.mqtt.address import parse_broker_url
from citybrain.mqtt.brokers import BrokerProcess, find_mosquitto, private_broker, reachable

from .conftest import in_ci

DEFAULT_URL = "mqtt://127.0.0.1:1883"


def require_mosquitto() -> str:
    """The mosquitto binary; fails under CI=true without it, skips elsewhere."""
    binary = find_mosquitto()
    if binary is None:
        if in_ci():
            pytest.fail("CI=true but no mosquitto binary (apt-get install mosquitto)")
        pytest.skip("needs Mosquitto itself, and no mosquitto binary is installed")
    return binary


def own_broker(workdir: Path) -> BrokerProcess:
    """A private broker, not yet started: Mosquitto, else (not in CI) the embedded one."""
    if in_ci():
        require_mosquitto()
    return private_broker(workdir)


@contextlib.contextmanager
def shared_broker(workdir: Path) -> Iterator[str]:
    """The URL of the broker to share between tests (see the module docstring)."""
    url = os.environ.get("CITYBRAIN_TEST_MQTT_URL", DEFAULT_URL)
    if in_ci():
        require_mosquitto()
    if url != "private":
        address = parse_broker_url(url)
        if reachable(address.host, address.port):
            yield url
            return
        if in_ci():
            pytest.fail(f"CI=true but no MQTT broker answers at {url}")
    with own_broker(workdir) as broker:
        yield broker.url
