"""An MQTT broker from PyPI (amqtt) for a machine without Mosquitto: run it as
``python -m citybrain.mqtt.embedded --port N``; ``citybrain.mqtt.brokers.EmbeddedBroker``
starts and stops it as a child process. Mosquitto stays the broker for production and CI.

It listens on ``127.0.0.1`` only and lets every client in (no credentials, no ACL, no
TLS). A client is not treated as anonymous, because amqtt drops an anonymous client's
persistent session and does not queue QoS 1 messages for it while it is away: with
``clean_session=False`` the session (subscriptions, queued and unacknowledged QoS 1
messages) outlives the connection, as on Mosquitto. Sessions live in memory only: a
restarted broker has forgotten them (the parking gateways resend what was not
acknowledged, the service subscribes again on every connection).

amqtt 0.12 loses a QoS 1 message it delivered when the subscriber does not PUBACK it
within 5 s or the connection ends first (it drops the message from the session instead
of resending it, with DUP, to the resumed session: MQTT 3.1.1 section 4.4; amqtt issue
401). The parking service acknowledges a read only after its commit, so that would lose
reads when the service dies. ``patch_amqtt`` changes that flow in this process only: a
delivered QoS 1 message stays in the session until its PUBACK comes, however late, and is
resent with DUP on the next connection of the session; redeliveries and the messages
queued while the client was away are sent without holding up the new connection's
SUBSCRIBE (the service waits for its SUBACK before it handles deliveries), and the
queued ones without the RETAIN flag amqtt put on them. It is checked by the broker tests
(``tests/test_mqtt_link.py``, the kill -9 tests) run on this broker.

SIGTERM or SIGINT shut it down, and so does the end of the process given by ``--parent``
(a parent killed with SIGKILL leaves no broker behind).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import amqtt
from amqtt.broker import Broker
from amqtt.mqtt.protocol.handler import ProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import OUTGOING, Session

PATCHED_FOR = "0.12."


class LoopbackAuth(BaseAuthPlugin):  # type: ignore[misc]  # amqtt is untyped
    """Lets every client in, without marking it anonymous (see the module docstring)."""

    @dataclass
    class Config:
        pass

    async def authenticate(self, *, session: Session) -> bool | None:
        return True


def broker_config(port: int, host: str = "127.0.0.1") -> dict[str, Any]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {f"{__name__}.LoopbackAuth": {}},
    }


# ------------------------------------------------------------------ amqtt's QoS 1 delivery


def _keep(handler: Any, task: asyncio.Task[Any]) -> None:
    """Hold a reference to a background task of ``handler`` until it ends."""
    tasks: set[asyncio.Task[Any]] = handler.__dict__.setdefault("_citybrain_tasks", set())
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def _qos1_flow(self: Any, message: Any) -> None:
    """amqtt's QoS 1 flow with the outgoing side changed: the PUBACK waiter is in place
    before the PUBLISH leaves, and the message leaves the session's in-flight set only on
    its PUBACK (a retry, after a reconnection, goes out with DUP and the same packet id)."""
    if message.direction != OUTGOING:
        await _ORIGINAL_QOS1(self, message)
        return
    session = self.session
    packet_id = message.packet_id
    if session is None or packet_id is None or message.puback_packet is not None:
        await _ORIGINAL_QOS1(self, message)  # amqtt's own errors for these cases
        return
    session.inflight_out[packet_id] = message
    waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    self._puback_waiters[packet_id] = waiter
    try:
        packet = message.build_publish_packet(dup=message.publish_packet is not None)
        await self._send_packet(packet)
        message.publish_packet = packet
        message.puback_packet = await waiter
        session.inflight_out.pop(packet_id, None)  # acknowledged: done
    finally:  # the connection ended: the message stays in flight for the next one
        if self._puback_waiters.get(packet_id) is waiter:
            del self._puback_waiters[packet_id]


async def _retry_deliveries(self: Any) -> None:
    """Resend the session's in-flight messages (in packet order) without waiting for
    their acknowledgements."""
    session = self.session
    for message in [*session.inflight_in.values(), *session.inflight_out.values()]:
        _keep(self, asyncio.ensure_future(self._handle_message_flow(message)))


async def _publish_session_queue(self: Any, session: Any) -> None:
    """Send what was queued for ``session`` while it was away, in order, without the RETAIN
    flag and without waiting for the acknowledgements."""
    handler = self._get_handler(session)
    if handler is None:
        return
    while not session.retained_messages.empty():
        queued = session.retained_messages.get_nowait()
        publish = handler.mqtt_publish(queued.topic, queued.data, queued.qos, retain=False)
        _keep(handler, asyncio.ensure_future(publish))


_ORIGINAL_QOS1: Any = ProtocolHandler._handle_qos1_message_flow


def patch_amqtt() -> None:
    """Apply the changes of the module docstring (amqtt 0.12 only)."""
    if not amqtt.__version__.startswith(PATCHED_FOR):
        raise RuntimeError(
            f"the embedded broker is made for amqtt {PATCHED_FOR}x, not {amqtt.__version__}"
        )
    for owner, name in (
        (ProtocolHandler, "_handle_qos1_message_flow"),
        (ProtocolHandler, "_retry_deliveries"),
        (Broker, "_publish_session_retained_messages"),
    ):
        if not callable(getattr(owner, name, None)):
            raise RuntimeError(f"amqtt {amqtt.__version__} has no {owner.__name__}.{name}")
    ProtocolHandler._handle_qos1_message_flow = _qos1_flow
    ProtocolHandler._retry_deliveries = _retry_deliveries
    Broker._publish_session_retained_messages = _publish_session_queue


# ------------------------------------------------------------------ the process


async def _watch_parent(pid: int, stop: asyncio.Event) -> None:
    while os.getppid() == pid:
        await asyncio.sleep(1.0)
    stop.set()


async def serve(port: int, parent: int | None = None) -> None:
    patch_amqtt()
    broker = Broker(broker_config(port))
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watch = None if parent is None else asyncio.create_task(_watch_parent(parent, stop))
    print(f"amqtt {amqtt.__version__} listening on 127.0.0.1:{port}", flush=True)
    await stop.wait()
    if watch is not None:
        watch.cancel()
    await broker.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m citybrain.mqtt.embedded")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--parent", type=int, help="shut down when this process ends")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("transitions").setLevel(logging.WARNING)
    asyncio.run(serve(args.port, args.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
