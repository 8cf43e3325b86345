"""The field service's I/O: the net it controls, the broker connection and the clock.

``load_core`` builds a ``FieldCore`` from map data (intersection models and the detector
layout from the net, corridors for escort routes); ``run_service`` connects to the broker,
feeds every message to the core as it arrives, ticks it once per second of ``clock`` and
publishes what it returns. paho's network thread only queues messages: the core runs on the
caller's thread alone.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, MQTTMessage
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from citybrain.control.catalog import make_controller
from citybrain.control.escort import EscortMode
from citybrain.errors import CitybrainError, ConfigError, ScenarioError
from citybrain.field.core import FieldCore, FieldSettings, Publish
from citybrain.field.protocol import (
    TOPIC_ROOT,
    FieldPayloadError,
    encode_service_status,
    service_status_topic,
    subscriptions,
)
from citybrain.mqtt.address import BrokerSettings, unique_client_id
from citybrain.mqtt.backoff import Backoff
from citybrain.mqtt.paho import make_client
from citybrain.settings import Settings

log = logging.getLogger("citybrain.field")

Clock = Callable[[], float]


def load_core(
    net_path: Path,
    controller: str,
    *,
    escort: str = "corridor",
    settings: Settings | None = None,
    field: FieldSettings | None = None,
    root: str = TOPIC_ROOT,
) -> FieldCore:
    """The core for the signals of a net (a ``.net.xml``, or the net of a ``.sumocfg``)."""
    from citybrain.netmodel.corridors import NetCorridors
    from citybrain.netmodel.layout import build_layout
    from citybrain.netmodel.net import NetGeometry, intersections_from_net, net_file_of, read_net

    settings = settings or Settings()
    try:
        mode = EscortMode(escort)
    except ValueError:
        choices = ", ".join(m.value for m in EscortMode)
        raise ConfigError(f"unknown escort mode {escort!r}; choose one of: {choices}") from None
    net_path = net_file_of(net_path)
    net = read_net(net_path)
    xs = intersections_from_net(net)
    if not xs:
        raise ScenarioError(f"{net_path}: the network has no traffic lights to control")
    layout = build_layout(xs, NetGeometry(net), settings.detectors)
    base = make_controller(controller, layout, settings)
    try:
        return FieldCore(
            layout,
            base,
            NetCorridors(net, xs),
            escort=mode,
            envelope=settings.envelope,
            escort_settings=settings.escort,
            settings=field,
            root=root,
        )
    except ValueError as exc:  # a bad topic root
        raise ConfigError(str(exc)) from None


class ScaledClock:
    """Wall time that runs ``rate`` times faster from the moment it is made (tests, replays)."""

    def __init__(self, rate: float = 1.0, start: float | None = None) -> None:
        self.rate = rate
        self.start = time.time() if start is None else start
        self._m0 = time.monotonic()

    def __call__(self) -> float:
        return self.start + (time.monotonic() - self._m0) * self.rate


@dataclass
class ServiceStats:
    ticks: int = 0
    skipped_s: int = 0
    """Seconds that were not ticked because the service fell behind."""
    published: int = 0
    unpublished: int = 0
    """States not published because the broker was not connected."""
    rejected: int = 0
    connections: int = 0


def run_service(
    core: FieldCore,
    broker: BrokerSettings,
    *,
    client_id: str = "citybrain-control",
    stop: threading.Event | None = None,
    clock: Clock = time.time,
    ready: threading.Event | None = None,
    keepalive: int = 30,
) -> ServiceStats:
    """Serve until ``stop`` is set. Reconnects by itself; while disconnected the signals'
    states are not published (the retained state keeps its old ``ts``: a signal that sees it
    age falls back to its own plan)."""
    stop = stop if stop is not None else threading.Event()
    stats = ServiceStats()
    inbox: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
    client: Client = make_client(
        broker, client_id, clean_session=True, reconnect=Backoff(1.0, 10.0)
    )
    status_topic = service_status_topic(core.root)
    client.will_set(status_topic, encode_service_status(False), qos=1, retain=True)
    wanted = subscriptions(core.root)
    sub_mid = [-1]

    def on_connect(
        c: Client, _u: Any, _f: ConnectFlags, rc: ReasonCode, _p: Properties | None
    ) -> None:
        if rc.is_failure:
            log.error("broker %s refused the connection: %s", broker.address.url, rc)
            return
        stats.connections += 1
        log.info("connected to %s as %s", broker.address.url, client_id)
        _, mid = c.subscribe(list(wanted))
        sub_mid[0] = -1 if mid is None else mid
        c.publish(
            status_topic,
            encode_service_status(True, clock(), signals=len(core.layout.intersections)),
            qos=1,
            retain=True,
        )

    def on_subscribe(
        _c: Client, _u: Any, mid: int, codes: list[ReasonCode], _p: Properties | None
    ) -> None:
        if mid != sub_mid[0]:
            return
        for (topic, _), code in zip(wanted, codes, strict=False):
            if code.is_failure:
                log.error("subscription to %s refused (check the ACL)", topic)
        if ready is not None:
            ready.set()

    def on_message(_c: Client, _u: Any, message: MQTTMessage) -> None:
        inbox.put((message.topic, bytes(message.payload)))

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    address = broker.address
    try:
        client.connect(address.host, address.port, keepalive=keepalive)
    except OSError as exc:
        raise CitybrainError(f"cannot reach the broker at {address.url}: {exc}") from None
    client.loop_start()
    try:
        _serve(core, client, inbox, stop, clock, stats)
    finally:
        if client.is_connected():
            info = client.publish(status_topic, encode_service_status(False, clock()), 1, True)
            info.wait_for_publish(timeout=2.0)
        client.disconnect()
        client.loop_stop()
    return stats


def _serve(
    core: FieldCore,
    client: Client,
    inbox: queue.SimpleQueue[tuple[str, bytes]],
    stop: threading.Event,
    clock: Clock,
    stats: ServiceStats,
) -> None:
    next_tick = float(math.floor(clock()) + 1)
    while not stop.is_set():
        while True:
            try:
                topic, payload = inbox.get_nowait()
            except queue.Empty:
                break
            try:
                out = core.handle(topic, payload, clock())
            except FieldPayloadError as exc:
                stats.rejected += 1
                log.warning("message on %s rejected: %s", topic, exc)
                continue
            _publish(client, out, stats)
        now = clock()
        if now < next_tick:
            stop.wait(0.01)
            continue
        if now - next_tick >= 1.0:  # fell behind: tick the current second only
            behind = math.floor(now - next_tick)
            stats.skipped_s += behind
            next_tick += behind
        _publish(client, core.tick(next_tick), stats)
        stats.ticks += 1
        next_tick += 1.0


def _publish(client: Client, messages: list[Publish], stats: ServiceStats) -> None:
    for m in messages:
        if not client.is_connected():
            stats.unpublished += 1
            continue
        client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
        stats.published += 1


def publish_once(
    broker: BrokerSettings,
    topic: str,
    payload: bytes,
    *,
    qos: int = 1,
    retain: bool = False,
    timeout: float = 10.0,
    client_id: str | None = None,
) -> None:
    """Connect, publish one message, wait for the broker's acknowledgement, disconnect."""
    client = make_client(broker, client_id or unique_client_id("citybrain-cli"), clean_session=True)
    address = broker.address
    try:
        client.connect(address.host, address.port, keepalive=30)
    except OSError as exc:
        raise CitybrainError(f"cannot reach the broker at {address.url}: {exc}") from None
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=qos, retain=retain)
        try:
            info.wait_for_publish(timeout=timeout)
        except (RuntimeError, ValueError) as exc:
            raise CitybrainError(f"cannot publish to {address.url}: {exc}") from None
        if not info.is_published():
            raise CitybrainError(f"the broker at {address.url} did not acknowledge the message")
    finally:
        client.disconnect()
        client.loop_stop()
