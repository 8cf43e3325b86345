"""The broker's answers, never silence: a refused connection, a refused publish, a refused
subscription and no answer in time, each a one-line ``CitybrainError``.

Mosquitto's ACL is silent towards MQTT 3.1.1 clients: it acknowledges a publish it denies
and drops it. An MQTT v5 client (``make_client(..., protocol="5")``) gets the reason code in
the PUBACK (``Not authorized``, 0x87), which ``publish_confirmed`` turns into
``RefusedByBroker`` naming the topic, the user and the reason. Subscriptions: a SUBACK with
a failure code raises the same way; Mosquitto 2.0 with an ``acl_file`` grants every
subscription, though, and filters each delivery by the user's read rights, so a client that
may not read a topic learns it only by hearing nothing: callers that wait for an answer say
so in their timeout message.

The helpers act on a paho client of the caller's (callback API 2), connected with
``connect_confirmed``; they hook its ``on_connect``/``on_publish``/``on_subscribe`` only while
they wait (the caller's own callbacks still run) and block the calling thread, never paho's
network thread: do not call them from a paho callback.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, MQTTv5, error_string
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from citybrain.errors import CitybrainError
from citybrain.mqtt.address import BrokerSettings


class RefusedByBroker(CitybrainError):
    """The broker refused a connection, a publish or a subscription (``reason``: its words)."""

    def __init__(self, settings: BrokerSettings, what: str, reason: str) -> None:
        self.user = settings.address.username
        self.reason = reason
        who = f"user {self.user!r}" if self.user else "no user name"
        super().__init__(f"the broker at {settings.address.url} refused {what} ({who}): {reason}")


class NoAnswer(CitybrainError):
    """Nothing came back in time (a CONNACK, a PUBACK, a SUBACK, or a service's answer)."""


def connect_confirmed(client: Client, settings: BrokerSettings, *, timeout_s: float = 10.0) -> None:
    """Connect ``client`` to ``settings``' broker, start its network thread, and return once
    the broker has accepted the connection. ``CitybrainError`` when the broker cannot be
    reached (or its certificate is not trusted), ``RefusedByBroker`` when it refuses the
    user or password (the network thread is then stopped), ``NoAnswer`` without a CONNACK
    within ``timeout_s``."""
    address = settings.address
    done = threading.Event()
    codes: list[ReasonCode] = []
    previous: Callable[..., None] | None = client.on_connect

    def hook(c: Client, u: Any, flags: ConnectFlags, rc: ReasonCode, p: Properties | None) -> None:
        codes.append(rc)
        done.set()
        if previous is not None:
            previous(c, u, flags, rc, p)

    client.on_connect = hook
    try:
        try:
            client.connect(address.host, address.port, keepalive=30)
        except OSError as exc:
            raise CitybrainError(f"cannot reach the broker at {address.url}: {exc}") from None
        client.loop_start()
        if not done.wait(timeout_s):
            _stop(client)
            raise NoAnswer(f"the broker at {address.url} did not answer within {timeout_s:g} s")
    finally:
        client.on_connect = previous
    if codes[0].is_failure:
        _stop(client)
        raise RefusedByBroker(settings, "the connection", str(codes[0]))


def publish_confirmed(
    client: Client,
    settings: BrokerSettings,
    topic: str,
    payload: bytes,
    *,
    retain: bool = False,
    timeout_s: float = 10.0,
) -> ReasonCode:
    """Publish at QoS 1 on a connected MQTT v5 client and wait for the broker's PUBACK; its
    reason code when it took the message (``Success``, or ``No matching subscribers``).
    ``RefusedByBroker`` names the topic, the user and the reason (``Not authorized``: the ACL);
    ``NoAnswer`` without a PUBACK within ``timeout_s``. A 3.1.1 client is a ``ValueError``:
    the broker would not tell it."""
    _require_v5(client)
    acks: dict[int, ReasonCode] = {}
    ready = threading.Condition()
    previous: Callable[..., None] | None = client.on_publish

    def hook(c: Client, u: Any, mid: int, rc: ReasonCode, p: Properties | None) -> None:
        with ready:
            acks[mid] = rc
            ready.notify_all()
        if previous is not None:
            previous(c, u, mid, rc, p)

    client.on_publish = hook
    try:
        info = client.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise CitybrainError(
                f"cannot publish to {topic} at {settings.address.url}: {error_string(info.rc)}"
            )
        deadline = time.monotonic() + timeout_s
        with ready:
            while info.mid not in acks:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NoAnswer(
                        f"the broker at {settings.address.url} did not acknowledge the publish "
                        f"to {topic} within {timeout_s:g} s"
                    )
                ready.wait(left)
            code = acks[info.mid]
    finally:
        client.on_publish = previous
    if code.is_failure:
        raise RefusedByBroker(settings, f"a publish to {topic}", str(code))
    return code


def subscribe_confirmed(
    client: Client,
    settings: BrokerSettings,
    topics: Sequence[tuple[str, int]],
    *,
    timeout_s: float = 10.0,
) -> None:
    """Subscribe to ``topics`` (filter, QoS) on a connected client and wait for the SUBACK;
    ``RefusedByBroker`` names the first filter refused, ``NoAnswer`` without a SUBACK in
    time. (Mosquitto's ``acl_file`` grants every subscription: see the module docstring.)"""
    acks: dict[int, list[ReasonCode]] = {}
    ready = threading.Condition()
    previous: Callable[..., None] | None = client.on_subscribe

    def hook(c: Client, u: Any, mid: int, rcs: list[ReasonCode], p: Properties | None) -> None:
        with ready:
            acks[mid] = rcs
            ready.notify_all()
        if previous is not None:
            previous(c, u, mid, rcs, p)

    client.on_subscribe = hook
    try:
        rc, mid = client.subscribe(list(topics))
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise CitybrainError(f"cannot subscribe at {settings.address.url}: {error_string(rc)}")
        deadline = time.monotonic() + timeout_s
        with ready:
            while mid not in acks:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NoAnswer(
                        f"the broker at {settings.address.url} did not answer the subscription "
                        f"within {timeout_s:g} s"
                    )
                ready.wait(left)
            codes = acks[mid]
    finally:
        client.on_subscribe = previous
    for (topic, _), code in zip(topics, codes, strict=False):
        if code.is_failure:
            raise RefusedByBroker(settings, f"a subscription to {topic}", str(code))


def _require_v5(client: Client) -> None:
    if client.protocol != MQTTv5:
        raise ValueError("only an MQTT v5 client learns that the broker refused a publish")


def _stop(client: Client) -> None:
    client.disconnect()
    client.loop_stop()
