"""Configured paho-mqtt clients: for the field service, command-line one-shots, tests and
benches (the parking hot path uses ``citybrain.mqtt.link`` instead).

A client speaks MQTT 3.1.1 unless asked for MQTT v5 (``protocol="5"``). With 3.1.1 and
``clean_session=False`` and a fixed client id the broker keeps the session (subscriptions,
queued QoS 1 messages and unacknowledged deliveries) across disconnects and process deaths.
MQTT v5 is what a client needs to learn that the broker refused a publish: Mosquitto drops a
publish its ACL denies, and answers a v5 client's PUBACK with "Not authorized" where a 3.1.1
client is told nothing (``citybrain.mqtt.answers``). v5 clients here have clean sessions only.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Any, Literal

from paho.mqtt.client import Client, MQTTv5, MQTTv311
from paho.mqtt.enums import CallbackAPIVersion

from citybrain.mqtt.address import BrokerSettings
from citybrain.mqtt.backoff import Backoff

MqttVersion = Literal["3.1.1", "5"]

MAX_INFLIGHT = 0
"""QoS 1 messages a client with many signals (a field service, a cabinet agent on one
connection) sends before the broker's acknowledgements: no limit. paho's default is 20: a
second's thousand commands would wait for fifty round trips to the broker, and with any
limit paho walks every message not yet acknowledged at each acknowledgement (quadratic: an
agent of 1,000 cabinets whose acknowledgements fell behind spent its whole CPU there)."""


def make_client(
    settings: BrokerSettings,
    client_id: str,
    *,
    clean_session: bool,
    manual_ack: bool = False,
    reconnect: Backoff | None = None,
    protocol: MqttVersion = "3.1.1",
) -> Client:
    """A paho client (callback API 2, MQTT 3.1.1 or ``protocol="5"``) with credentials and
    TLS set, not yet connected. ``reconnect``: the schedule of paho's own reconnections (its
    network loop waits ``first`` seconds after a lost connection, doubling up to ``most``;
    paho counts whole seconds); paho's default (1 to 120 s) without it. An MQTT v5 client
    starts clean and its session ends with its connection (``clean_session=False`` is a
    ``ValueError`` there)."""
    if protocol == "5":
        if not clean_session:
            raise ValueError("MQTT v5 clients here have clean sessions only")
        client = Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTv5,
            manual_ack=manual_ack,
        )
    elif protocol == "3.1.1":
        client = Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=MQTTv311,
            manual_ack=manual_ack,
        )
    else:
        raise ValueError(f"unknown MQTT version {protocol!r}: use 3.1.1 or 5")
    address = settings.address
    if address.username is not None:
        client.username_pw_set(address.username, address.password)
    context = settings.tls_context()
    if context is not None:
        client.tls_set_context(context)
    if reconnect is not None:
        client.reconnect_delay_set(
            min_delay=max(1, round(reconnect.first)), max_delay=max(1, round(reconnect.most))
        )
    client.on_socket_open = _no_delay
    return client


def _no_delay(_client: Client, _userdata: Any, sock: Any) -> None:
    """Send each packet at once (TCP_NODELAY): with Nagle's algorithm a small message waits
    for the acknowledgement of the one before, 40 ms a hop with delayed acknowledgements; a
    field round trip (cabinet -> broker -> service -> broker -> cabinet) took 90 ms."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def forget_session(settings: BrokerSettings, client_id: str, timeout: float = 5.0) -> None:
    """Discard the broker's persistent session of ``client_id`` (subscriptions and queued
    messages): connect once with a clean session, then disconnect."""
    client = make_client(settings, client_id, clean_session=True)
    client.connect(settings.address.host, settings.address.port, keepalive=10)
    deadline = time.monotonic() + timeout
    while not client.is_connected() and time.monotonic() < deadline:
        client.loop(timeout=0.05)
    client.disconnect()
    client.loop(timeout=0.05)
