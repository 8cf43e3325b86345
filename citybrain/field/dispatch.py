"""A dispatcher's side of an escort: send a request or a cancellation, and wait for the
control service's answer.

In this order: subscribe to the vehicle's status topic (the service's answers are not
retained: a client must be listening before it asks), publish at QoS 1 over MQTT v5 (the
broker's PUBACK says whether its ACL took the message), then wait for the status that answers
it: ``active`` or ``rejected`` for a request, ``cancelled`` or ``rejected`` for a
cancellation (an ``ended`` or ``expired`` of an earlier escort is not an answer). A refusal by
the broker and no answer in time are one-line ``CitybrainError`` s; what the service answered
is returned, ``rejected`` included, for the caller to report.
"""

from __future__ import annotations

import logging
import queue
import time
from typing import Any

from paho.mqtt.client import Client, MQTTMessage

from citybrain.field.protocol import (
    REQUEST_QOS,
    TOPIC_ROOT,
    EscortCall,
    EscortCancel,
    EscortStatus,
    FieldPayloadError,
    decode_status,
    encode_call,
    encode_cancel,
    escort_status_topic,
    requests_topic,
)
from citybrain.mqtt.address import BrokerSettings, unique_client_id
from citybrain.mqtt.answers import (
    NoAnswer,
    connect_confirmed,
    publish_confirmed,
    subscribe_confirmed,
)
from citybrain.mqtt.paho import make_client

log = logging.getLogger("citybrain.field")

EscortMessage = EscortCall | EscortCancel


def answers(message: EscortMessage, status: EscortStatus) -> bool:
    """Whether ``status`` is the service's answer to ``message``."""
    if status.vehicle != message.vehicle:
        return False
    if isinstance(message, EscortCancel):
        return status.status in ("cancelled", "rejected")
    return status.status in ("active", "rejected")


def ask(
    broker: BrokerSettings,
    message: EscortMessage,
    *,
    root: str = TOPIC_ROOT,
    timeout_s: float = 10.0,
    client_id: str | None = None,
) -> EscortStatus:
    """Send ``message`` and return the service's answer (see the module docstring). Each
    step (connection, subscription, the broker's acknowledgement, the answer) may take up to
    ``timeout_s``."""
    status_topic = escort_status_topic(message.vehicle, root)
    topic = requests_topic(root)
    payload = encode_cancel(message) if isinstance(message, EscortCancel) else encode_call(message)
    inbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()

    def on_message(_c: Client, _u: Any, m: MQTTMessage) -> None:
        if m.topic == status_topic:
            inbox.put(bytes(m.payload))

    client = make_client(
        broker,
        client_id or unique_client_id("citybrain-dispatch"),
        clean_session=True,
        protocol="5",
    )
    client.on_message = on_message
    connect_confirmed(client, broker, timeout_s=timeout_s)
    try:
        subscribe_confirmed(client, broker, [(status_topic, REQUEST_QOS)], timeout_s=timeout_s)
        publish_confirmed(client, broker, topic, payload, timeout_s=timeout_s)
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                raw = inbox.get(timeout=left)
            except queue.Empty:
                break
            try:
                status = decode_status(raw)
            except FieldPayloadError as exc:
                log.warning("a message on %s breaks the contract: %s", status_topic, exc)
                continue
            if answers(message, status):
                return status
    finally:
        client.disconnect()
        client.loop_stop()
    user = broker.address.username
    hint = f", and may user {user!r} read {status_topic}?" if user else "?"
    raise NoAnswer(
        f"no answer from a control service within {timeout_s:g} s (is one serving topic root "
        f"{root!r} at {broker.address.url}{hint})"
    )
