"""The parking service's MQTT side: take reads off the broker, record them, acknowledge.

Why no read is lost and none is charged twice, even under ``kill -9``:

1. The service holds a persistent session (its own client id, ``clean_session=False``)
   with a QoS 1 subscription to every lot's reads (shared with the other services of its
   group, when several run), so the broker keeps each delivery until the service sends
   its PUBACK, across disconnects and process deaths, and redelivers the unacknowledged
   ones when the session resumes.
2. The connection (``citybrain.mqtt.link.Link``, our own MQTT 3.1.1 packets) PUBACKs a delivery only
   when the handler says so. The handler first records the message (one committed
   database transaction, idempotent by ``read_id``), then publishes the gateway ack, and
   only then acks it to the broker. Deliveries are batched: the service takes what
   arrives within ``batch_window`` seconds of the first pending message (and whatever is
   already waiting on the socket then), up to ``batch_size`` messages, records them in
   ONE transaction (``record_many``), and only after its commit publishes the gateway
   acks and acks each message to the broker, in the order they arrived. A sink without
   ``record_many`` is called once per message on the network thread. With
   ``record_many`` the transactions run on ledger threads while the network thread keeps
   receiving (on PostgreSQL two lanes, ledger processes that record different lots side
   by side, each taking the next messages once it committed; a lot's messages are
   recorded in arrival order); the ledger side never touches the connection: the network
   thread sends acks once it sees them committed (after handing the next messages to an
   idle lane, so that they are recorded meanwhile), in arrival order (a message's ack
   waits for the commit of every message that arrived before it), and only on the
   connection the message came in on (a transaction still running when the connection
   drops is waited for and its acks are dropped: the broker redelivers those messages,
   recorded as duplicates). So no ack can leave before its commit or go to a later
   connection.
3. A death before the commit leaves no effect and no PUBACK: the broker redelivers and the
   read is recorded then. A death after the commit but before the PUBACK makes the broker
   redeliver a read that is already recorded: the sink answers ``duplicate`` (no second
   charge) and the service acks it. A death after the PUBACK loses nothing either.
4. When the sink fails (the database is down), that message (that batch) is not acked,
   later messages are not processed, and the service disconnects and reconnects after a
   back-off: the broker then redelivers everything unacknowledged, in order.

(aiomqtt 2.x instead hands messages to the application after paho has already acked them
on receipt; a death while the application processes the message loses it.)
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any, Protocol, cast, runtime_checkable

from citybrain.mqtt.address import BrokerSettings
from citybrain.mqtt.backoff import Backoff
from citybrain.mqtt.link import ConnectionLost, Link, Refused, open_subscribed
from citybrain.parking.mqtt import (
    QOS,
    TOPIC_ROOT,
    AckPlan,
    OutcomeKind,
    all_reads_filter,
    check_topic_root,
    lot_of_topic,
    plan_ack,
    shared,
)

log = logging.getLogger(__name__)

SERVICE_CLIENT_ID = "citybrain-parking-service"


class RecordOutcome(Protocol):
    """What the sink did with one message."""

    @property
    def read_id(self) -> str | None: ...

    @property
    def kind(self) -> str: ...  # "recorded" | "duplicate" | "dead_letter"


class ReadSink(Protocol):
    def record(self, topic_lot: str, payload: bytes, received_at: datetime) -> RecordOutcome:
        """Record one reads message in one database transaction, idempotent by read id.

        Returns after the commit. Invalid payloads are kept as dead letters (``kind`` is
        ``"dead_letter"``, ``read_id`` when one could be read). Raises only when nothing
        could be committed (the message will be redelivered)."""
        ...


@runtime_checkable
class ReopenableSink(Protocol):
    """A sink that can be opened again in another process and takes concurrent writers
    (the PostgreSQL ledger): the service then records in processes of its own."""

    @property
    def parallel_writers(self) -> bool: ...

    def opener(self) -> Callable[[], BatchReadSink]: ...


@runtime_checkable
class BatchReadSink(ReadSink, Protocol):
    def record_many(self, items: Sequence[tuple[str, bytes, datetime]]) -> Sequence[RecordOutcome]:
        """Record ``(topic_lot, payload, received_at)`` messages in ONE transaction, with
        the outcomes ``record`` would give one after the other, in order. Returns after
        the commit; raises when nothing could be committed (none of them is stored)."""
        ...


RecordMany = Callable[[Sequence[tuple[str, bytes, datetime]]], Sequence[RecordOutcome]]

DEFAULT_BATCH_SIZE = 200
DEFAULT_BATCH_WINDOW = 0.005  # seconds
LANES = 2  # transactions side by side, for a sink that takes concurrent writers
LANE_START_S = 60.0  # seconds a ledger process may take to start and open the ledger
MIN_PART = 50  # messages: a batch is split only into parts at least this large


@dataclass(frozen=True)
class Delivery:
    """One message as the connection handed it over (not yet acknowledged)."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    received_at: datetime | None = None  # None: when it is recorded
    seq: int = 0  # its place in the connection's arrival order (the order of its ack)


@dataclass(frozen=True)
class Recorded:
    """A committed batch and the ack planned for each delivery (None: not a reads topic)."""

    deliveries: tuple[Delivery, ...]
    plans: tuple[tuple[str, RecordOutcome, AckPlan] | None, ...]


@dataclass(frozen=True)
class Outcome:
    """A plain ``RecordOutcome``."""

    read_id: str | None
    kind: OutcomeKind


class Transport(Protocol):
    """The part of the connection (``citybrain.mqtt.link.Link``) the handler uses."""

    def publish(self, topic: str, payload: bytes, qos: int) -> Any: ...

    def ack(self, mid: int, qos: int) -> Any: ...


@dataclass
class ServiceStats:
    recorded: int = 0
    duplicate: int = 0
    dead_letter: int = 0
    foreign_topic: int = 0
    sink_failures: int = 0
    connections: int = 0
    batches: int = 0  # transactions (record_many calls, or records for a one-by-one sink)

    @property
    def handled(self) -> int:
        return self.recorded + self.duplicate + self.dead_letter + self.foreign_topic


class ReadHandler:
    """Record, ack the gateway, ack the broker: in that order, for each message.

    After a sink failure the handler is ``broken``: it acks nothing more until ``reset``
    (the caller reconnects so the broker redelivers)."""

    def __init__(
        self,
        sink: ReadSink,
        transport: Transport,
        *,
        root: str = TOPIC_ROOT,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        stats: ServiceStats | None = None,
    ) -> None:
        self.sink = sink
        self.transport = transport
        self.root = check_topic_root(root)
        self.clock = clock
        self.stats = stats if stats is not None else ServiceStats()
        self.broken = False

    def reset(self) -> None:
        self.broken = False

    def handle(self, topic: str, payload: bytes, mid: int, qos: int) -> bool:
        """Process one delivery; True when it was acknowledged to the broker."""
        if self.broken:
            return False
        lot = lot_of_topic(topic, "reads", self.root)
        if lot is None:
            self._foreign(topic, mid, qos)
            return True
        try:
            outcome = self.sink.record(lot, payload, self.clock())
            plan = plan_ack(outcome.kind, outcome.read_id, lot, self.root)
        except Exception:
            self._failed(f"recording a read from lot {lot} failed; it stays unacknowledged")
            return False
        self.stats.batches += 1
        self._answer(lot, outcome, plan, mid, qos)
        return True

    def handle_batch(self, deliveries: Sequence[Delivery]) -> int:
        """Record deliveries in one transaction, then ack each (gateway, then broker), in
        order. Returns how many were acknowledged: all of them, or none when the sink
        failed (the handler is then ``broken``). A sink without ``record_many`` records
        and acks them one at a time (stopping at the first failure)."""
        if self.broken or not deliveries:
            return 0
        if not isinstance(self.sink, BatchReadSink):
            done = 0
            for d in deliveries:
                if not self.handle(d.topic, d.payload, d.mid, d.qos):
                    break
                done += 1
            return done
        recorded = self.record_batch(deliveries)
        if recorded is None:
            self.fail()
            return 0
        self.stats.batches += 1
        return self.answer_batch(recorded)

    def record_batch(
        self, deliveries: Sequence[Delivery], record_many: RecordMany | None = None
    ) -> Recorded | None:
        """The database half of ``handle_batch`` (any thread; touches no transport and no
        shared state): record the deliveries in ONE transaction (``record_many``: the
        sink's, unless another is given, such as a ledger in another process) and plan
        their acks. None when nothing was committed. The sink must batch."""
        if record_many is None:
            sink = self.sink
            assert isinstance(sink, BatchReadSink)
            record_many = sink.record_many
        lots = [lot_of_topic(d.topic, "reads", self.root) for d in deliveries]
        now = self.clock()
        items = [
            (lot, d.payload, now if d.received_at is None else d.received_at)
            for d, lot in zip(deliveries, lots, strict=True)
            if lot is not None
        ]
        try:
            outcomes = list(record_many(items)) if items else []
            if len(outcomes) != len(items):
                raise RuntimeError(f"{len(outcomes)} outcomes for {len(items)} messages")
            answers = iter(outcomes)
            plans: list[tuple[str, RecordOutcome, AckPlan] | None] = []
            for lot in lots:
                if lot is None:
                    plans.append(None)
                else:
                    outcome = next(answers)
                    plans.append(
                        (lot, outcome, plan_ack(outcome.kind, outcome.read_id, lot, self.root))
                    )
        except Exception:
            log.exception(
                "recording a batch of %d reads failed; they stay unacknowledged", len(items)
            )
            return None
        return Recorded(tuple(deliveries), tuple(plans))

    def fail(self) -> None:
        """A batch could not be recorded (``record_batch`` logged why): nothing more is
        acknowledged until ``reset``."""
        self.broken = True
        self.stats.sink_failures += 1

    def answer_batch(self, recorded: Recorded) -> int:
        """The network half of ``handle_batch`` (the connection's thread): after the
        commit, ack each delivery (gateway, then broker), in order."""
        for d, planned in zip(recorded.deliveries, recorded.plans, strict=True):
            if planned is None:
                self._foreign(d.topic, d.mid, d.qos)
            else:
                lot, outcome, plan = planned
                self._answer(lot, outcome, plan, d.mid, d.qos)
        return len(recorded.deliveries)

    def _foreign(self, topic: str, mid: int, qos: int) -> None:
        # Not ours (cannot happen with our subscription): nothing to record or answer.
        self.stats.foreign_topic += 1
        log.warning("ignoring a message on unexpected topic %r", topic)
        self.transport.ack(mid, qos)

    def _failed(self, what: str) -> None:
        self.broken = True
        self.stats.sink_failures += 1
        log.exception(what)

    def _answer(self, lot: str, outcome: RecordOutcome, plan: AckPlan, mid: int, qos: int) -> None:
        kind = outcome.kind
        if kind == "recorded":
            self.stats.recorded += 1
        elif kind == "duplicate":
            self.stats.duplicate += 1
        else:
            self.stats.dead_letter += 1
            log.warning("dead letter from lot %s (read id %s)", lot, outcome.read_id)
        log.debug("%s read %s from lot %s", kind, outcome.read_id, lot)
        if plan.topic is not None and plan.payload is not None:
            self.transport.publish(plan.topic, plan.payload, QOS)
        self.transport.ack(mid, qos)


class BrokerRefused(RuntimeError):
    """The broker refused our credentials or subscription: retrying cannot help."""


def run_service(
    broker_url: str,
    sink: ReadSink,
    *,
    client_id: str = SERVICE_CLIENT_ID,
    username: str | None = None,
    password: str | None = None,
    ca_file: str | None = None,
    topic_root: str = TOPIC_ROOT,
    keepalive: int = 30,
    stop: threading.Event | None = None,
    on_ready: Callable[[], None] | None = None,
    max_backoff: float = 10.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    batch_window: float = DEFAULT_BATCH_WINDOW,
    lanes: int | None = None,
    group: str | None = None,
) -> ServiceStats:
    """Subscribe to every lot's reads and record them until ``stop`` is set.

    ``client_id`` names this service's persistent session; ``group``: several services
    share the reads (an MQTT shared subscription ``$share/GROUP/...``: the broker hands
    each read to one of the group's sessions; Mosquitto 2 and EMQX take it from MQTT 3.1.1
    clients). Each service needs a client id of its own (two with one id knock each other
    off the broker). A session that subscribed without the group before drops that
    subscription (it would get every read a second time). What the broker handed to a
    service that died stays with its session until it connects again with its id (the
    gateways resend what is not acknowledged meanwhile): run each service under a
    supervisor that restarts it.

    Reconnects by itself (broker restarts, network loss, sink failures) with a back-off
    up to ``max_backoff`` seconds. ``on_ready`` is called after each subscription is
    granted. Raises ``BrokerRefused`` when the credentials or the ACL are wrong.

    Batching: a batch is recorded once ``batch_window`` seconds have passed since its
    first message and nothing more is waiting on the socket, or once it holds
    ``batch_size`` messages. Under load the batches grow by themselves (what arrived
    during the previous transaction); at a low rate a message waits at most about
    ``batch_window``. ``batch_size=1`` records one message per transaction.

    ``lanes``: transactions recorded side by side, each on a lane of its own (default:
    ``LANES`` when the sink takes concurrent writers, as the PostgreSQL ledger does, else
    1). A lane that committed takes the next messages at once, without waiting for the
    others; a lot's messages go to one lane at a time, in arrival order, and the acks
    keep the arrival order (see ``_Lanes``, ``_InOrder``). Such a sink
    (``ReopenableSink``) is opened again in one process per lane, so that the matching
    rules of two lanes run on two cores instead of taking turns under one interpreter
    lock.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if batch_window < 0:
        raise ValueError("batch_window must not be negative")
    settings = BrokerSettings.from_url(
        broker_url, username=username, password=password, ca_file=ca_file
    )
    address = settings.address
    stop = stop if stop is not None else threading.Event()
    stats = ServiceStats()
    handler = ReadHandler(sink, _Unconnected(), root=topic_root, stats=stats)
    subscription = shared(all_reads_filter(topic_root), group)
    wake_r, wake_w = os.pipe()  # the ledger thread wakes the network loop on each commit
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)

    def wake() -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe wakes the loop anyway
            os.write(wake_w, b"x")

    reopen = sink.opener if isinstance(sink, ReopenableSink) and sink.parallel_writers else None
    if lanes is None:
        lanes = LANES if reopen is not None else 1
    lane_sink = reopen() if reopen is not None and lanes > 1 else None
    batching = isinstance(sink, BatchReadSink)
    worker = _Lanes(handler, wake, lanes, lane_sink) if batching else None
    pending: list[Delivery] = []  # received, not yet recorded nor acknowledged
    first_at = 0.0  # monotonic arrival of pending[0]
    order = _InOrder()

    def due(arrived: int) -> bool:
        """A batch is ready: full, or its window passed with nothing more arriving."""
        return bool(pending) and (
            len(pending) >= batch_size
            or (not arrived and time.monotonic() >= first_at + batch_window)
        )

    def take(eligible: Callable[[Delivery], bool] = lambda _: True) -> list[Delivery]:
        """The oldest ``batch_size`` eligible pending messages (in arrival order)."""
        nonlocal first_at
        batch: list[Delivery] = []
        rest: list[Delivery] = []
        for d in pending:
            (batch if len(batch) < batch_size and eligible(d) else rest).append(d)
        pending[:] = rest
        if pending:
            first_at = time.monotonic()
        return batch

    def answer(finished: list[Recorded | None]) -> None:
        for recorded in finished:
            if recorded is not None:  # a failure was noted when it was collected
                stats.batches += 1
                handler.answer_batch(order.committed(recorded))

    backoff = Backoff(0.2, max_backoff)  # reset by progress, not by a connection alone
    handled = 0

    def connect() -> Link:
        link = open_subscribed(settings, client_id, subscription, QOS, keepalive)
        if group is not None:
            try:
                link.unsubscribe(all_reads_filter(topic_root))
            except BaseException:
                link.abort()
                raise
        return link

    try:
        while not stop.is_set():
            try:
                link = backoff.attempt(connect, url=address.url, who="the service", log=log)
            except Refused as exc:  # fatal: bad credentials, or the ACL
                raise BrokerRefused(str(exc)) from None
            if link is None:
                backoff.wait(stop)
                continue
            stats.connections += 1
            log.info(
                "connected to %s as %s (session %s), subscribed to %s",
                address.url,
                client_id,
                "resumed" if link.session_present else "new",
                subscription,
            )
            if on_ready is not None:
                on_ready()
            handler.transport = link
            handler.reset()
            pending.clear()  # a new connection: the broker redelivers what was unacked
            order = _InOrder()
            lost = False
            try:
                while not stop.is_set():
                    if pending and (
                        worker is None or (worker.idle and any(worker.eligible(d) for d in pending))
                    ):
                        linger = first_at + batch_window - time.monotonic()
                    else:
                        linger = 0.2  # nothing to send a lane before a commit wakes us
                    arrived = link.poll(max(0.0, linger), wake_r)
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 4096)
                    if arrived:
                        now = handler.clock()
                        if not pending:
                            first_at = time.monotonic()
                        pending.extend(
                            Delivery(m.topic, m.payload, m.packet_id, m.qos, now, order.next_seq())
                            for m in arrived
                        )
                    if worker is None:
                        if due(len(arrived)):
                            handler.handle_batch(take())
                    else:
                        finished = worker.finished()
                        if None in finished:
                            handler.fail()
                        if worker.idle and not handler.broken and due(len(arrived)):
                            # The next messages first: they are recorded while this thread
                            # sends the acks of what just committed (and goes on receiving).
                            batch = take(worker.eligible)
                            if batch:
                                worker.submit(batch)
                        answer(finished)
                    link.flush()
                    if handler.broken:
                        break
                    if stats.handled > handled:  # progress: the next failure retries quickly
                        handled = stats.handled
                        backoff.reset()
            except ConnectionLost as exc:
                log.warning("connection to %s lost: %s", address.url, exc)
                lost = True
            if worker is not None and worker.busy:
                # Leaving this connection with transactions running: wait for their
                # commits. Their acks go out only on this connection, while it is still up
                # (a packet id means nothing on the next one; the broker redelivers those
                # messages and they are recorded as duplicates), and only up to the first
                # message that was not committed.
                finished = worker.finished(block=True)
                if None in finished:
                    handler.fail()
                if not lost:
                    answer(finished)
                    with contextlib.suppress(ConnectionLost):
                        link.flush()
            handler.transport = _Unconnected()
            if handler.broken or lost:
                link.abort()  # the broker will redeliver what is unacked
            else:
                link.close()
            if not stop.is_set():
                backoff.failed()  # every connection's end waits, as a failed attempt does
                backoff.wait(stop)
    finally:
        if worker is not None:
            worker.close()
        os.close(wake_r)
        os.close(wake_w)
    return stats


class _Unconnected:
    """The handler's transport between connections: nothing may be sent."""

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        raise ConnectionLost("not connected")

    def ack(self, mid: int, qos: int) -> None:
        raise ConnectionLost("not connected")


class _Lanes:
    """Records batches on ledger threads of its own (lanes), so the connection's thread
    keeps receiving and acknowledging while transactions run. It never touches the
    connection: the connection's thread takes what finished (``finished``) and sends the
    acks (``on_done`` tells it that a transaction ended).

    Each lane records one transaction at a time, on its own thread (and database
    connection; with ``lane_sink``, in a process of its own, so that the matching rules
    of two lanes run on two cores instead of taking turns under one interpreter lock).
    The lanes do not wait for each other: a lane that committed takes the next messages
    at once, while another is still recording (or waiting for its commit to reach the
    disk). A lot's messages are recorded in the order they arrived: while a lane holds
    some of a lot's messages, the lot's next ones wait for that lane (``eligible``). The
    ledger locks by lot, so lanes never wait on each other's locks."""

    def __init__(
        self,
        handler: ReadHandler,
        on_done: Callable[[], None],
        lanes: int = 1,
        lane_sink: Callable[[], BatchReadSink] | None = None,
    ) -> None:
        if lanes < 1:
            raise ValueError("lanes must be at least 1")
        self._handler = handler
        self._on_done = on_done
        self._remotes = [_RemoteSink(lane_sink) for _ in range(lanes)] if lane_sink else []
        self._jobs: list[queue.Queue[list[Delivery] | None]] = [queue.Queue() for _ in range(lanes)]
        self._done: queue.Queue[tuple[int, Recorded | None]] = queue.Queue()
        self._held: list[set[str | None]] = [set() for _ in range(lanes)]  # lots per lane
        self._holding: set[str | None] = set()  # all of them
        self._lots: dict[str, str | None] = {}  # topic -> lot
        self._busy = [False] * lanes
        self._threads = [
            threading.Thread(
                target=self._run,
                args=(i, self._remotes[i].record_many if self._remotes else None),
                name=f"parking-ledger-{i}",
                daemon=True,
            )
            for i in range(lanes)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def busy(self) -> bool:
        return any(self._busy)

    @property
    def idle(self) -> int:
        return self._busy.count(False)

    def lot_of(self, delivery: Delivery) -> str | None:
        topic = delivery.topic
        if topic not in self._lots:
            self._lots[topic] = lot_of_topic(topic, "reads", self._handler.root)
        return self._lots[topic]

    def eligible(self, delivery: Delivery) -> bool:
        """Not held back behind a lane that records some of its lot's messages."""
        return self.lot_of(delivery) not in self._holding

    def submit(self, batch: list[Delivery]) -> None:
        """Record ``batch`` (eligible messages, in arrival order) on the idle lanes: split
        by lot among them when it is large enough, all of a lot's messages in one part."""
        idle = [i for i, busy in enumerate(self._busy) if not busy]
        assert idle, "no idle lane"
        parts = _split_by_lot(batch, len(idle), self.lot_of)  # at most len(idle)
        for lane, indices in zip(idle, parts, strict=False):
            part = [batch[i] for i in indices]
            self._busy[lane] = True
            self._held[lane] = {self.lot_of(d) for d in part}
            self._holding |= self._held[lane]
            self._jobs[lane].put(part)

    def finished(self, block: bool = False) -> list[Recorded | None]:
        """The transactions that ended since the last call (None: it failed, nothing of it
        was committed); with ``block``, waits until no lane is busy."""
        out: list[Recorded | None] = []
        while True:
            try:
                lane, recorded = self._done.get(block=block and self.busy)
            except queue.Empty:
                return out
            self._busy[lane] = False
            self._holding -= self._held[lane]
            self._held[lane] = set()
            out.append(recorded)

    def close(self) -> None:
        self.finished(block=True)
        for jobs in self._jobs:
            jobs.put(None)
        for thread in self._threads:
            thread.join()
        for remote in self._remotes:
            remote.close()

    def _run(self, lane: int, record_many: RecordMany | None) -> None:
        jobs = self._jobs[lane]
        while True:
            part = jobs.get()
            if part is None:
                return
            recorded: Recorded | None = None
            try:
                recorded = self._handler.record_batch(part, record_many)
            finally:
                self._done.put((lane, recorded))
                self._on_done()


class _InOrder:
    """Acknowledgements in the order the messages arrived on the connection (MQTT 3.1.1
    section 4.6: PUBACKs in the order of the PUBLISH packets), whatever order the lanes
    commit in: a message is answered once it and every message before it committed."""

    def __init__(self) -> None:
        self._next = 0  # the ``seq`` of the next message to answer
        self._count = 0
        self._committed: dict[int, tuple[Delivery, tuple[str, RecordOutcome, AckPlan] | None]]
        self._committed = {}

    def next_seq(self) -> int:
        """The ``seq`` of the next message to arrive (0, 1, 2, ... on a connection)."""
        self._count += 1
        return self._count - 1

    def committed(self, recorded: Recorded) -> Recorded:
        """Note a committed transaction; what may be answered now, in arrival order."""
        for d, plan in zip(recorded.deliveries, recorded.plans, strict=True):
            self._committed[d.seq] = (d, plan)
        answered: list[tuple[Delivery, tuple[str, RecordOutcome, AckPlan] | None]] = []
        while self._next in self._committed:
            answered.append(self._committed.pop(self._next))
            self._next += 1
        return Recorded(tuple(d for d, _ in answered), tuple(p for _, p in answered))


def _split_by_lot(
    batch: Sequence[Delivery], lanes: int, lot_of: Callable[[Delivery], str | None]
) -> list[list[int]]:
    """Indices of ``batch`` in at most ``lanes`` non-empty parts, all of a lot's messages
    in one part (in arrival order), the parts about equally large. A small batch stays
    whole: each transaction has a fixed cost (a dozen statements), which only a large
    part repays."""
    lanes = min(lanes, len(batch) // MIN_PART)
    if lanes <= 1:
        return [list(range(len(batch)))]
    by_lot: dict[str | None, list[int]] = {}
    for i, d in enumerate(batch):
        by_lot.setdefault(lot_of(d), []).append(i)
    parts: list[list[int]] = [[] for _ in range(lanes)]
    for indices in sorted(by_lot.values(), key=len, reverse=True):
        min(parts, key=len).extend(indices)
    return [sorted(part) for part in parts if part]


class _RemoteSink:
    """A sink in a child process: ``record_many`` sends the items over a pipe and waits for
    the outcomes (the child commits before it answers). A child that died is started
    again for the next batch; the batch it was recording fails (nothing is acked)."""

    def __init__(self, factory: Callable[[], BatchReadSink]) -> None:
        self._factory = factory
        self._context = multiprocessing.get_context("spawn")
        self._start()

    def _start(self) -> None:
        old = getattr(self, "_conn", None)
        if old is not None:
            old.close()
        self._conn, child = self._context.Pipe()
        self._process = self._context.Process(
            target=_lane_main, args=(child, self._factory), name="parking-lane", daemon=True
        )
        self._process.start()
        child.close()
        # Ready before the service says it is: a first batch must not wait for imports.
        if not self._conn.poll(LANE_START_S):
            self._process.kill()
            raise RuntimeError(f"a ledger process did not start within {LANE_START_S:.0f} s")
        try:
            hello = self._conn.recv()
        except (EOFError, OSError):
            hello = f"it exited with {self._process.exitcode}"
        if hello != "ready":
            raise RuntimeError(f"a ledger process could not open the ledger: {hello}")

    def record_many(self, items: Sequence[tuple[str, bytes, datetime]]) -> list[Outcome]:
        if not self._process.is_alive():
            self._start()
        try:
            self._conn.send(list(items))
            answer = self._conn.recv()
        except (EOFError, OSError):
            self._process.join(1.0)
            raise RuntimeError("the ledger process died") from None
        if isinstance(answer, str):
            raise RuntimeError(f"the ledger process failed: {answer}")
        return [Outcome(read_id, cast(OutcomeKind, kind)) for kind, read_id in answer]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._process.join(5.0)
        if self._process.is_alive():
            self._process.kill()
        self._conn.close()


def _lane_main(conn: Connection, factory: Callable[[], BatchReadSink]) -> None:
    """A lane process: record what arrives, answer ``[(kind, read_id)]`` or the error.
    Ctrl-C is for the service: it stops the lanes by closing their pipes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        sink = factory()
    except Exception as exc:
        conn.send(f"{type(exc).__name__}: {exc}")
        return
    conn.send("ready")
    while True:
        try:
            items = conn.recv()
        except (EOFError, OSError):
            return  # the service is gone
        if items is None:
            return
        try:
            answer: Any = [
                (str(getattr(o.kind, "value", o.kind)), o.read_id) for o in sink.record_many(items)
            ]
        except Exception as exc:
            log.exception("recording a batch of %d reads failed", len(items))
            answer = f"{type(exc).__name__}: {exc}"
        try:
            conn.send(answer)
        except (EOFError, OSError):
            return
