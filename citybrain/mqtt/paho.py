"""Configured paho-mqtt clients: for the field service, command-line one-shots, tests and
benches (the parking hot path uses ``citybrain.mqtt.link`` instead).

Every client speaks MQTT 3.1.1 with ``clean_session`` chosen by the caller: with
``clean_session=False`` and a fixed client id the broker keeps the session (subscriptions,
queued QoS 1 messages and unacknowledged deliveries) across disconnects and process deaths.
"""

from __future__ import annotations

import time

from paho.mqtt.client import Client, MQTTv311
from paho.mqtt.enums import CallbackAPIVersion

from citybrain.mqtt.address import BrokerSettings
from citybrain.mqtt.backoff import Backoff


def make_client(
    settings: BrokerSettings,
    client_id: str,
    *,
    clean_session: bool,
    manual_ack: bool = False,
    reconnect: Backoff | None = None,
) -> Client:
    """A paho client (callback API 2, MQTT 3.1.1) with credentials and TLS set, not yet
    connected. ``reconnect``: the schedule of paho's own reconnections (its network loop
    waits ``first`` seconds after a lost connection, doubling up to ``most``; paho counts
    whole seconds); paho's default (1 to 120 s) without it."""
    client = Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=MQTTv311,
        manual_ack=manual_ack,
    )
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
    return client


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
