"""The field service's I/O: the net it controls, the broker connection and the clock.

``load_core`` builds a ``FieldCore`` from map data (intersection models and the detector
layout from the net, cut to the service's shard; corridors for escort routes); ``run_service``
connects to the broker, feeds every message to the core as it arrives, ticks it once per
second and publishes what it returns. paho's network thread only queues messages: the core
runs on the caller's thread alone.

The clock. A ``ClockTick`` on ``{root}/clock`` (SUMO-in-the-loop, lockstep) makes the service
follow that run's seconds: the core is ticked at exactly ``tick.t`` once every message
received before the tick is handled (the host publishes the cabinets' detectors and reports
of ``t``, then the tick, on one connection), and the liveness message that follows the
commands of ``t`` carries ``"tick": t``. Without ticks the service runs on the wall clock, one
tick per whole second, starting ``start_after_s`` after it first hears a cabinet whose
clock agrees with its own within ``WALL_CLOCK_SLACK_S`` (so a lockstep run's first tick finds
a controller that has not run yet: a simulated field's reports carry the simulation's seconds).
Before that it does not tick: with no cabinet there is nothing to command. Claims do not wait
for ticks: they follow the reports. Should a lockstep run begin after wall-clock ticks all the
same, the core starts a fresh controller and claims every signal again.

Ticking on the readings (``readings_wait_s``, ``control serve --tick-on-readings``). On the
wall clock the tick of second ``t`` runs at ``t`` (after the messages queued by then), the
very moment the cabinets publish their readings of ``t``: a reading that has not arrived by
then is used one second late (``FieldCore.counts["late"]``). With ``readings_wait_s`` the
tick of ``t`` runs once the detector message of ``t`` from every cabinet we hold is in
(``FieldCore.awaited``), but not before ``t`` and at most ``readings_wait_s`` after it, so a
command of ``t`` is computed from the readings of ``t``: the reading-to-command latency is
then the cabinets' publication, the broker, the service's tick and the way back.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, MQTTMessage
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from citybrain.control.catalog import make_controller
from citybrain.control.escort import EscortMode
from citybrain.errors import CitybrainError, ConfigError, ScenarioError
from citybrain.field.core import DEFAULT_SERVICE, ClockFollower, FieldCore, FieldSettings, Publish
from citybrain.field.protocol import (
    TOPIC_ROOT,
    FieldPayloadError,
    clock_topic,
    decode_tick,
    encode_service_status,
    service_topic,
)
from citybrain.field.shards import Shard, is_primary, select_signals
from citybrain.mqtt.address import BrokerSettings, unique_client_id
from citybrain.mqtt.backoff import Backoff
from citybrain.mqtt.paho import MAX_INFLIGHT, make_client
from citybrain.settings import Settings

log = logging.getLogger("citybrain.field")

RUN_ENDED_AFTER_S = 5.0
"""A lockstep run whose ticks stopped this long ago (wall clock) has ended: a service follows
the next run that ticks."""

Clock = Callable[[], float]

WALL_CLOCK_SLACK_S = 3600.0
"""Cabinet reports whose ``ts`` is further than this from the wall clock come from a simulated
field (SUMO-in-the-loop): the service then ticks on that run's clock only."""


def load_core(
    net_path: Path,
    controller: str,
    *,
    escort: str = "corridor",
    settings: Settings | None = None,
    field: FieldSettings | None = None,
    root: str = TOPIC_ROOT,
    service_id: str = DEFAULT_SERVICE,
    standby: bool = False,
    signals: Sequence[str] | None = None,
    shard: Shard | None = None,
    instance: str = "",
    started_s: float = 0.0,
) -> FieldCore:
    """The core for the signals of a net (a ``.net.xml``, or the net of a ``.sumocfg``):
    all of them, the named ``signals``, or a ``shard`` (``citybrain.field.shards``)."""
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
    ids = [x.id for x in xs]
    mine = select_signals(ids, signals, shard)
    chosen = set(mine)
    shard_xs = tuple(x for x in xs if x.id in chosen)
    layout = build_layout(shard_xs, NetGeometry(net), settings.detectors)
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
            service_id=service_id,
            standby=standby,
            instance=instance,
            started_s=started_s,
            primary=is_primary(ids, chosen),
            sharded=len(chosen) < len(ids),
            remake=lambda: make_controller(controller, layout, settings),
        )
    except ValueError as exc:  # a bad topic root
        raise ConfigError(str(exc)) from None


def check_readings_wait(readings_wait_s: float | None) -> None:
    """``ConfigError`` unless ``readings_wait_s`` is None or a number of seconds in (0, 1)."""
    if readings_wait_s is not None and not 0.0 < readings_wait_s < 1.0:
        raise ConfigError(
            f"the wait for a second's readings must be more than 0 and less than 1 s, "
            f"not {readings_wait_s:g}"
        )


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
    """Seconds that were not ticked because the service fell behind (wall clock)."""
    lockstep_ticks: int = 0
    """Ticks of a SUMO-in-the-loop run's clock (included in ``ticks``)."""
    ignored_ticks: int = 0
    """Clock ticks of another run, or repeated."""
    published: int = 0
    unpublished: int = 0
    """Messages not published because the broker was not connected."""
    rejected: int = 0
    connections: int = 0
    run: str | None = None
    """The lockstep run followed, if any."""
    readings_ticks: int = 0
    """Wall-clock ticks run once every awaited reading was in (``readings_wait_s``)."""
    timed_out_ticks: int = 0
    """Wall-clock ticks run after ``readings_wait_s`` with readings still missing."""
    missing_readings: int = 0
    """Readings still missing at those ticks, summed."""
    recent: deque[TickRecord] = field(
        default_factory=lambda: deque(maxlen=RECENT_TICKS), repr=False
    )
    """The last ``RECENT_TICKS`` wall-clock ticks."""


RECENT_TICKS = 3600


@dataclass(frozen=True, slots=True)
class TickRecord:
    """One wall-clock tick, as ``ServiceStats.recent`` keeps it."""

    t: float
    """The second ticked."""
    delay_ms: float
    """How long after ``t`` (wall clock) the tick ran."""
    missing: int
    """Awaited readings not in at the tick (``readings_wait_s``; else 0)."""
    late: int
    """Readings the tick used that were of an earlier second."""
    duration_ms: float
    """The tick and the publication of its messages (paho queues them)."""


class _RejectLog:
    """One log line per rejected message, at most ``burst`` lines per ``window_s``."""

    def __init__(self, burst: int = 20, window_s: float = 10.0) -> None:
        self.burst, self.window_s = burst, window_s
        self.start = -math.inf
        self.lines = self.hidden = 0

    def __call__(self, topic: str, exc: FieldPayloadError) -> None:
        now = time.monotonic()
        if now - self.start > self.window_s:
            if self.hidden:
                log.warning("%d more message(s) rejected in %g s", self.hidden, self.window_s)
            self.start, self.lines, self.hidden = now, 0, 0
        if self.lines < self.burst:
            self.lines += 1
            log.warning("message on %s rejected: %s", topic, exc)
        else:
            self.hidden += 1


def run_service(
    core: FieldCore,
    broker: BrokerSettings,
    *,
    client_id: str = DEFAULT_SERVICE,
    stop: threading.Event | None = None,
    clock: Clock = time.time,
    ready: threading.Event | None = None,
    keepalive: int = 30,
    start_after_s: float = 2.0,
    readings_wait_s: float | None = None,
    max_inflight: int = MAX_INFLIGHT,
    stats: ServiceStats | None = None,
) -> ServiceStats:
    """Serve until ``stop`` is set; then release every lease held. Reconnects by itself;
    while disconnected nothing is published (the cabinets' watchdogs then fall back to their
    local plans). Raises ``CitybrainError`` (after going offline) when, without standby,
    another live service holds the whole shard. ``readings_wait_s``: tick each wall-clock
    second once its readings are in, waiting at most this long (see the module docstring;
    None: at the second's boundary). ``max_inflight``: QoS 1 messages sent and not yet
    acknowledged by the broker at most (0, the default: no limit; a second's commands go out
    at once). ``stats``: filled
    in as it runs (a new one by default), and returned."""
    check_readings_wait(readings_wait_s)
    stop = stop if stop is not None else threading.Event()
    stats = stats if stats is not None else ServiceStats()
    inbox: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
    client: Client = make_client(
        broker, client_id, clean_session=True, reconnect=Backoff(1.0, 10.0)
    )
    client.max_inflight_messages_set(max_inflight)
    status_topic = service_topic(core.service_id, core.root)
    client.will_set(
        status_topic, encode_service_status(False, service=core.service_id), qos=1, retain=True
    )
    wanted = core.subscriptions()
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
        live = core.liveness(clock())
        c.publish(live.topic, live.payload, qos=live.qos, retain=live.retain)

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
    loop = _Loop(core, client, inbox, stop, clock, stats, start_after_s, readings_wait_s)
    try:
        loop.serve()
    finally:
        if client.is_connected() and core.duplicate is None:  # a duplicate leaves all alone
            infos = [
                client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
                for m in [*core.release_all(loop.now()), core.liveness(clock(), online=False)]
            ]
            for info in infos:
                info.wait_for_publish(timeout=2.0)
        client.disconnect()
        client.loop_stop()
    if core.taken is not None:
        raise CitybrainError(f"service {core.service_id}: {core.taken}")
    return stats


class _Loop:
    """The service's thread: messages in order, ticks by the wall clock or the lockstep one."""

    def __init__(
        self,
        core: FieldCore,
        client: Client,
        inbox: queue.SimpleQueue[tuple[str, bytes]],
        stop: threading.Event,
        clock: Clock,
        stats: ServiceStats,
        start_after_s: float,
        readings_wait_s: float | None = None,
    ) -> None:
        self.core, self.client, self.inbox, self.stop = core, client, inbox, stop
        self.clock, self.stats, self.start_after_s = clock, stats, start_after_s
        self.readings_wait_s = readings_wait_s
        self.clock_topic = clock_topic(core.root)
        self.lockstep = ClockFollower()
        self.last_tick_wall = 0.0
        """Wall (monotonic) time of the last lockstep tick run."""
        self.heard_at: float | None = None
        """Wall time a cabinet was first heard on the wall clock."""
        self.far_clock = False
        self.next_tick: float | None = None
        self.reject = _RejectLog()

    def now(self) -> float:
        """The service's time: in lockstep the second the next tick will run (the reports
        arriving between ticks are of that second), else the wall clock."""
        t = self.lockstep.last_t
        return self.clock() if t is None else t + 1.0

    def serve(self) -> None:
        while not self.stop.is_set() and self.core.taken is None:
            wait = 0.01
            if self.next_tick is not None and self.lockstep.run is None:
                wait = min(wait, max(self._tick_due() - self.clock(), 0.0))
            try:
                topic, payload = self.inbox.get(timeout=wait)
            except queue.Empty:
                self._wall_tick()
                continue
            self._dispatch(topic, payload)
            self._wall_tick()

    def _dispatch(self, topic: str, payload: bytes) -> None:
        if topic == self.clock_topic:
            self._lockstep_tick(payload)
        else:
            self._message(topic, payload)

    def _message(self, topic: str, payload: bytes) -> None:
        try:
            out = self.core.handle(topic, payload, self.now())
        except FieldPayloadError as exc:
            self.stats.rejected += 1
            self.reject(topic, exc)
            return
        if self.heard_at is None and self.core.report_ts is not None:
            now = self.clock()
            if abs(self.core.report_ts - now) < WALL_CLOCK_SLACK_S:
                self.heard_at = now
            elif not self.far_clock:
                self.far_clock = True
                log.info(
                    "cabinet reports carry a clock %.0f s away from this machine's: a "
                    "simulated field; waiting for its clock ticks on %s",
                    self.core.report_ts - now,
                    self.clock_topic,
                )
        self._publish(out)

    def _lockstep_tick(self, payload: bytes) -> None:
        try:
            tick = decode_tick(payload)
        except FieldPayloadError as exc:
            self.stats.rejected += 1
            self.reject(self.clock_topic, exc)
            return
        first = self.lockstep.run is None
        now = time.monotonic()
        if (
            not first
            and tick.run != self.lockstep.run
            and now - self.last_tick_wall > RUN_ENDED_AFTER_S
        ):  # the run followed has stopped ticking: follow the new one
            log.info("run %s stopped ticking; following run %s", self.lockstep.run, tick.run)
            self.lockstep = ClockFollower()
            self.lockstep.accept(tick)
            self.stats.run = tick.run
            self._publish(self.core.new_run(tick.t))
            first = False
        elif not self.lockstep.accept(tick):
            self.stats.ignored_ticks = self.lockstep.ignored
            if tick.run != self.lockstep.run and self.lockstep.ignored == 1:
                log.warning(
                    "clock ticks of run %s ignored: this service follows run %s",
                    tick.run,
                    self.lockstep.run,
                )
            return
        if first:
            self.stats.run = tick.run
            log.info("following the lockstep clock of run %s from %g s", tick.run, tick.t)
            self._publish(self.core.start_clock(tick.t, lockstep=True))
        self.last_tick_wall = now
        self._publish(self.core.tick(tick.t))
        self._publish([self.core.liveness(tick.t, tick=tick.t, run=tick.run)])
        self.stats.ticks += 1
        self.stats.lockstep_ticks += 1

    def _tick_due(self) -> float:
        """When the next wall tick is due: its second, or while its readings are awaited
        the end of the wait for them (a reading that comes sooner wakes the loop)."""
        assert self.next_tick is not None
        core, wait_s = self.core, self.readings_wait_s
        if wait_s is not None and core.awaited_t == self.next_tick and core.awaited:
            return self.next_tick + wait_s
        return self.next_tick

    def _following(self) -> bool:
        """Whether the service follows a lockstep run's clock."""
        return self.lockstep.run is not None

    def _wall_tick(self) -> None:
        """Tick on the wall clock as soon as a second is due, after the messages that
        arrived before it (those queued then; later ones count in the next second); with
        ``readings_wait_s``, once the second's awaited readings are in too (at most that
        long after its start)."""
        if self.lockstep.run is not None:
            return
        now = self.clock()
        if self.next_tick is None:
            if self.heard_at is None or now - self.heard_at < self.start_after_s:
                return
            self.next_tick = float(math.floor(now))
            self._publish(self.core.start_clock(self.next_tick, lockstep=False))
        if now < self.next_tick:
            return
        core, stats, wait_s = self.core, self.stats, self.readings_wait_s
        waiting = wait_s is not None and core.awaited_t == self.next_tick
        if waiting and core.awaited and now < self.next_tick + (wait_s or 0.0):
            return
        for _ in range(self.inbox.qsize()):
            try:
                self._dispatch(*self.inbox.get_nowait())
            except queue.Empty:
                break
            if self._following():  # a lockstep run began meanwhile
                return
        missing = len(core.awaited) if waiting else 0
        if missing:
            stats.timed_out_ticks += 1
            stats.missing_readings += missing
        elif waiting:
            stats.readings_ticks += 1
        if now - self.next_tick >= 1.0:  # fell behind: tick the current second only
            behind = math.floor(now - self.next_tick)
            stats.skipped_s += behind
            self.next_tick += behind
        late = core.counts["late"]
        self._publish(core.tick(self.next_tick))
        stats.recent.append(
            TickRecord(
                self.next_tick,
                (now - self.next_tick) * 1000.0,
                missing,
                core.counts["late"] - late,
                (self.clock() - now) * 1000.0,
            )
        )
        stats.ticks += 1
        self.next_tick += 1.0

    def _publish(self, messages: list[Publish]) -> None:
        client = self.client
        for m in messages:
            if not client.is_connected():
                self.stats.unpublished += 1
                continue
            client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
            self.stats.published += 1


def stats_json(core: FieldCore, stats: ServiceStats) -> dict[str, Any]:
    """What a service did, as JSON: its ``ServiceStats`` (the recent ticks as lists of
    ``TickRecord`` fields), the core's message counts and the lease book's counts."""
    out: dict[str, Any] = {name: getattr(stats, name) for name in ServiceStats.__dataclass_fields__}
    out["recent"] = [[r.t, r.delay_ms, r.missing, r.late, r.duration_ms] for r in stats.recent]
    out["recent_fields"] = list(TickRecord.__dataclass_fields__)
    out["service"] = core.service_id
    out["signals"] = len(core.xs)
    out["counts"] = dict(core.counts)
    out["leases"] = dict(core.book.counts)
    out["statuses"] = {s.value: n for s, n in Counter(core.statuses.values()).items()}
    return out


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
