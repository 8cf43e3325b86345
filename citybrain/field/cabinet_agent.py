"""The cabinet agent's I/O: cabinets on a broker, each with its lamps and detectors, at 1 Hz.

``run_cabinets`` connects the cabinets of a ``CabinetHost`` to the broker (one connection per
cabinet when each has its own credentials, as in the field; else one shared connection),
hands every command to its cabinet the moment it arrives (a state the monitor allows is
shown at once), and once per second of ``clock`` reads each cabinet's detectors and
publishes them (every cabinet's readings first, so that none waits for the others' work),
then runs each cabinet's second (watchdog, local plan) and publishes what it shows. paho's
network threads only queue messages: the cabinets run on the caller's thread alone.

Reading-to-command latency (``AgentStats.reading_to_command``): for a command of second
``t`` (its ``ts``), from the moment its cabinet's readings of ``t`` were published to the
moment the cabinet took the command, both on the agent's clock. It says how fast the loop
closes when the service computes the command of ``t`` from the readings of ``t`` (``control
serve --tick-on-readings``); a command that comes more than ``KEEP_PUBLISHED_S`` seconds
after its readings is counted ``unmatched``.

The lamps and detectors are the caller's (``Lamps``, ``Detectors``): a cabinet's field I/O
(or a simulation of it, ``citybrain/field/simfield.py``).
"""

from __future__ import annotations

import heapq
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from paho.mqtt.client import Client, ConnectFlags, MQTTMessage
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from citybrain.errors import CitybrainError, ConfigError, ScenarioError
from citybrain.field.cabinet import (
    CabinetCore,
    CabinetHost,
    CabinetReadings,
    cabinet_layouts,
    detectors_message,
)
from citybrain.field.core import Publish
from citybrain.field.protocol import COMMAND_QOS, TOPIC_ROOT, DetectorReport, command_topic
from citybrain.field.shards import Shard, select_signals
from citybrain.mqtt.address import BrokerSettings
from citybrain.mqtt.backoff import Backoff
from citybrain.mqtt.paho import MAX_INFLIGHT, make_client
from citybrain.settings import Settings

log = logging.getLogger("citybrain.cabinet")

CABINET_USER_PREFIX = "cab-"
"""A cabinet's broker user is ``cab-{intersection}``."""

Clock = Callable[[], float]


class Lamps(Protocol):
    """A cabinet's signal heads: show ``state`` (SUMO's link letters) at one intersection."""

    def show(self, intersection: str, state: str, now_s: float) -> None: ...


class Detectors(Protocol):
    """A cabinet's detector inputs: one second of one intersection's loops and cameras (the
    message to publish and the values its local plan reads), or ``(None, None)``."""

    def read(
        self, intersection: str, now_s: float
    ) -> tuple[DetectorReport | None, CabinetReadings | None]: ...


@dataclass
class AgentStats:
    seconds: int = 0
    skipped_s: int = 0
    """Seconds not run because the agent fell behind its clock."""
    messages: int = 0
    published: int = 0
    unpublished: int = 0
    """Messages not published because the broker was not connected."""
    connections: int = 0
    latency_ms: deque[float] = field(default_factory=lambda: deque(maxlen=KEEP_SAMPLES))
    """Per command shown: from its ``ts`` (the service's clock) to the moment the cabinet
    took it (the agent's clock): meaningful where both clocks agree."""
    reading_to_command: deque[tuple[float, float]] = field(
        default_factory=lambda: deque(maxlen=KEEP_SAMPLES)
    )
    """Per command shown: (when it was taken, ms from the publication of its cabinet's
    readings of the command's second); see the module docstring."""
    unmatched: int = 0
    """Commands shown with no readings of their second published in the last
    ``KEEP_PUBLISHED_S`` seconds."""
    second_ms: deque[tuple[float, float, float]] = field(
        default_factory=lambda: deque(maxlen=KEEP_SAMPLES)
    )
    """Per second run: (the second, ms after it when every cabinet's readings were
    published, ms after it when its whole work was done)."""

    def to_json(self) -> dict[str, Any]:
        """Everything, the samples as lists (for ``cabinet run --stats-json``)."""
        return {
            name: list(value) if isinstance(value, deque) else value
            for name, value in vars(self).items()
        }


KEEP_SAMPLES = 500_000
"""The samples an agent keeps of each kind (the latest; an agent runs for months)."""


@dataclass(frozen=True)
class CabinetLogin:
    """The credentials of one cabinet (``cab-{intersection}`` by the credentials tool)."""

    username: str
    password: str


def run_cabinets(
    host: CabinetHost,
    detectors: Detectors,
    lamps: Lamps,
    broker: BrokerSettings,
    *,
    logins: Mapping[str, CabinetLogin] | None = None,
    client_id: str = "citybrain-cabinet",
    stop: threading.Event | None = None,
    clock: Clock = time.time,
    ready: threading.Event | None = None,
    keepalive: int = 10,
    stats: AgentStats | None = None,
) -> AgentStats:
    """Run until ``stop`` is set. With ``logins`` every cabinet has a connection of its own
    under its own user (it must have one); without, one connection serves all. ``stats``:
    filled in as it runs (a new one by default), and returned."""
    stop = stop if stop is not None else threading.Event()
    stats = stats if stats is not None else AgentStats()
    inbox: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
    keys = list(host.cabinets)
    if logins is not None:
        missing = [k for k in keys if k not in logins]
        if missing:
            raise CitybrainError(f"no credentials for cabinet(s) {', '.join(missing[:5])}")
        groups = {k: [k] for k in keys}
    else:
        groups = {"": keys}
    clients: dict[str, Client] = {}
    route: dict[str, Client] = {}
    subscribed: set[str] = set()

    def on_message(_c: Client, _u: Any, message: MQTTMessage) -> None:
        inbox.put((message.topic, bytes(message.payload)))

    for name, members in groups.items():
        settings = broker
        if logins is not None:
            login = logins[name]
            address = replace(broker.address, username=login.username, password=login.password)
            settings = replace(broker, address=address)
        cid = f"{client_id}-{name}" if name else client_id
        client = make_client(settings, cid, clean_session=True, reconnect=Backoff(1.0, 10.0))
        client.max_inflight_messages_set(MAX_INFLIGHT)
        client.on_message = on_message
        client.on_connect = _on_connect(members, host.root, stats, subscribed, ready, len(groups))
        clients[name] = client
        for k in members:
            route[k] = client
    address = broker.address
    try:
        for client in clients.values():
            client.connect(address.host, address.port, keepalive=keepalive)
            client.loop_start()
        _run(host, detectors, lamps, inbox, route, stop, clock, stats)
    except OSError as exc:
        raise CitybrainError(f"cannot reach the broker at {address.url}: {exc}") from None
    finally:
        for client in clients.values():
            client.disconnect()
            client.loop_stop()
    return stats


def _on_connect(
    members: Sequence[str],
    root: str,
    stats: AgentStats,
    subscribed: set[str],
    ready: threading.Event | None,
    groups: int,
) -> Callable[[Client, Any, ConnectFlags, ReasonCode, Properties | None], None]:
    lock = threading.Lock()

    def on_connect(
        c: Client, _u: Any, _f: ConnectFlags, rc: ReasonCode, _p: Properties | None
    ) -> None:
        if rc.is_failure:
            log.error("the broker refused the cabinet connection (%s): %s", members[0], rc)
            return
        stats.connections += 1
        topics = [(command_topic(k, root), COMMAND_QOS) for k in members]
        for start in range(0, len(topics), 500):
            c.subscribe(topics[start : start + 500])
        with lock:
            subscribed.add(members[0] if members else "")
            if ready is not None and len(subscribed) >= groups:
                ready.set()

    return on_connect


def _run(
    host: CabinetHost,
    detectors: Detectors,
    lamps: Lamps,
    inbox: queue.SimpleQueue[tuple[str, bytes]],
    route: Mapping[str, Client],
    stop: threading.Event,
    clock: Clock,
    stats: AgentStats,
) -> None:
    shown: dict[str, str] = {}
    counted: dict[str, int] = {}
    published: dict[float, dict[str, float]] = {}
    """Per second: when each cabinet's readings of it were published (agent clock)."""
    next_s = float(math.floor(clock()) + 1)

    waiting: list[tuple[float, str]] = []
    """(when due, cabinet) of commands held back a moment for a timing rule
    (``CabinetCore.deferred_due``), a heap."""

    def take(topic: str, payload: bytes) -> None:
        now = clock()
        key, out = host.handle(topic, payload, now)
        stats.messages += 1
        if key is None:
            return
        cab = host.cabinets[key]
        if cab.deferred_due is not None:
            heapq.heappush(waiting, (cab.deferred_due, key))
        shown_now(key, cab, out, now)

    def show_due() -> None:
        now = clock()
        while waiting and waiting[0][0] <= now:
            key = heapq.heappop(waiting)[1]
            cab = host.cabinets[key]
            shown_now(key, cab, cab.poll(now), now)

    def shown_now(key: str, cab: CabinetCore, out: list[Publish], now: float) -> None:
        """After a cabinet took a message: latency, lamps, and what it has to say."""
        taken = cab.stats.commands
        if taken != counted.get(key, 0):
            counted[key] = taken
            ts = cab.last_command_ts
            stats.latency_ms.append((now - ts) * 1000.0)
            sent = published.get(ts, {}).get(key)
            if sent is None:
                stats.unmatched += 1
            else:
                stats.reading_to_command.append((now, (now - sent) * 1000.0))
        if cab.state != shown.get(key):
            shown[key] = cab.state
            lamps.show(key, cab.state, now)
        if out:  # an event (a grant, a refusal): say at once what the cabinet shows
            out.extend(cab.report(now))
        _publish(route, key, out, stats)

    while not stop.is_set():
        while True:
            try:
                topic, payload = inbox.get_nowait()
            except queue.Empty:
                break
            take(topic, payload)
        show_due()
        now = clock()
        if now < next_s:
            wait = min(0.05, next_s - now, waiting[0][0] - now if waiting else math.inf)
            try:
                topic, payload = inbox.get(timeout=max(wait, 0.0))
            except queue.Empty:
                continue
            take(topic, payload)
            continue
        if now - next_s >= 1.0:
            behind = math.floor(now - next_s)
            stats.skipped_s += behind
            next_s += behind
        reads = {k: detectors.read(k, next_s) for k in host.cabinets}
        sent: dict[str, float] = {}
        for key, (report, _) in reads.items():
            if report is not None:
                _publish(route, key, [detectors_message(report, host.root)], stats)
                sent[key] = clock()
        published[next_s] = sent
        for old in [s for s in published if s < next_s - KEEP_PUBLISHED_S]:
            del published[old]
        readings_ms = (clock() - next_s) * 1000.0
        states, out = host.second(next_s, {k: (None, values) for k, (_, values) in reads.items()})
        for key, state in states.items():
            if state != shown.get(key):
                shown[key] = state
                lamps.show(key, state, next_s)
        for p in out:
            _publish(route, p.topic.split("/")[-2], [p], stats)
        stats.seconds += 1
        stats.second_ms.append((next_s, readings_ms, (clock() - next_s) * 1000.0))
        next_s += 1.0


KEEP_PUBLISHED_S = 3.0
"""How long the agent remembers when each cabinet's readings of a second were published."""


def _publish(
    route: Mapping[str, Client], key: str, messages: list[Publish], stats: AgentStats
) -> None:
    client = route.get(key)
    for m in messages:
        if client is None or not client.is_connected():
            stats.unpublished += 1
            continue
        client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
        stats.published += 1


def load_cabinets(
    net_path: Path,
    settings: Settings,
    start_s: float,
    *,
    signals: Sequence[str] | None = None,
    shard: Shard | None = None,
    root: str = TOPIC_ROOT,
    plan_running: bool = False,
) -> CabinetHost:
    """The cabinets of a net's signals (all, a list, or a shard), each with its own detectors
    as the detector layout places them, starting at ``start_s`` with a start-up all-red (or,
    with ``plan_running``, continuing the stored program the lamps ran until then)."""
    from citybrain.netmodel.layout import build_layout
    from citybrain.netmodel.net import NetGeometry, intersections_from_net, net_file_of, read_net

    net_path = net_file_of(net_path)
    net = read_net(net_path)
    xs = intersections_from_net(net)
    if not xs:
        raise ScenarioError(f"{net_path}: the network has no traffic lights")
    chosen = set(select_signals([x.id for x in xs], signals, shard))
    xs = tuple(x for x in xs if x.id in chosen)
    layouts = cabinet_layouts(build_layout(xs, NetGeometry(net), settings.detectors))
    try:
        cabinets = [
            CabinetCore(
                layout,
                settings.envelope,
                settings,
                start_s,
                settings.cabinet,
                root=root,
                plan_running=plan_running,
            )
            for layout in layouts.values()
        ]
    except ValueError as exc:  # a bad topic root or intersection id
        raise ConfigError(str(exc)) from None
    return CabinetHost(cabinets, root)


def read_logins(path: Path) -> dict[str, CabinetLogin]:
    """The cabinets' credentials from a ``user:password`` file (the credentials tool's):
    ``cab-{intersection}`` lines, by intersection."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the credentials file {path}: {exc.strerror}") from None
    found = {}
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise ConfigError(f"{path}:{n}: expected user:password")
        if user.startswith(CABINET_USER_PREFIX):
            found[user[len(CABINET_USER_PREFIX) :]] = CabinetLogin(user, password)
    return found
