"""The parking service's MQTT side: take reads off the broker, record them, acknowledge.

Why no read is lost and none is charged twice, even under ``kill -9``:

1. The service holds a persistent session (fixed client id, ``clean_session=False``) with
   a QoS 1 subscription to every lot's reads, so the broker keeps each delivery until the
   service sends its PUBACK, across disconnects and process deaths, and redelivers the
   unacknowledged ones when the session resumes.
2. The connection (``mqttlink.Link``, our own MQTT 3.1.1 packets) PUBACKs a delivery only
   when the handler says so. The handler first records the message (one committed
   database transaction, idempotent by ``read_id``), then publishes the gateway ack, and
   only then acks it to the broker. Deliveries are batched: the service takes what
   arrives within ``batch_window`` seconds of the first pending message (and whatever is
   already waiting on the socket then), up to ``batch_size`` messages, records them in
   ONE transaction (``record_many``), and only after its commit publishes the gateway
   acks and acks each message to the broker, in the order they arrived. A sink without
   ``record_many`` is called once per message on the network thread. With
   ``record_many`` the transaction runs on a ledger thread (one batch at a time, in
   order; on PostgreSQL split by lot over two ledger processes) while the network thread
   keeps receiving; the ledger side never touches the connection: the network thread
   sends a batch's acks once it sees the batch committed (after handing the next batch to
   the ledger side, so that one is recorded meanwhile), and only on the connection the
   batch came in on (a batch still being recorded when the connection drops is waited
   for and its acks are dropped: the broker redelivers those messages, recorded as
   duplicates). So no ack can leave before its commit or go to a later connection.
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

from citybrain.parking.broker import BrokerSettings
from citybrain.parking.mqtt import (
    QOS,
    TOPIC_ROOT,
    AckPlan,
    OutcomeKind,
    all_reads_filter,
    check_topic_root,
    lot_of_topic,
    plan_ack,
)
from citybrain.parking.mqttlink import ConnectionLost, Refused, open_subscribed

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
LANES = 2  # transactions side by side per batch, for a sink that takes concurrent writers
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
    """The part of the connection (``mqttlink.Link``) the handler uses."""

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
        self.stats.batches += 1
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
) -> ServiceStats:
    """Subscribe to every lot's reads and record them until ``stop`` is set.

    Reconnects by itself (broker restarts, network loss, sink failures) with a back-off
    up to ``max_backoff`` seconds. ``on_ready`` is called after each subscription is
    granted. Raises ``BrokerRefused`` when the credentials or the ACL are wrong.

    Batching: a batch is recorded once ``batch_window`` seconds have passed since its
    first message and nothing more is waiting on the socket, or once it holds
    ``batch_size`` messages. Under load the batches grow by themselves (what arrived
    during the previous transaction); at a low rate a message waits at most about
    ``batch_window``. ``batch_size=1`` records one message per transaction.

    ``lanes``: each batch is split by lot into so many transactions recorded side by side
    (default: ``LANES`` when the sink takes concurrent writers, as the PostgreSQL ledger
    does, else 1). Such a sink (``ReopenableSink``) is opened again in one process per
    lane, so that the matching rules of two lanes run on two cores instead of taking turns
    under one interpreter lock.
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
    subscription = all_reads_filter(topic_root)
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
    worker = _BatchWorker(handler, wake, lanes, lane_sink) if batching else None
    pending: list[Delivery] = []  # received, not yet recorded nor acknowledged
    first_at = 0.0  # monotonic arrival of pending[0]

    def due(arrived: int) -> bool:
        """A batch is ready: full, or its window passed with nothing more arriving."""
        return bool(pending) and (
            len(pending) >= batch_size
            or (not arrived and time.monotonic() >= first_at + batch_window)
        )

    def take() -> list[Delivery]:
        nonlocal first_at
        batch = pending[:batch_size]
        del pending[:batch_size]
        if pending:
            first_at = time.monotonic()
        return batch

    backoff = 0.2
    handled = 0
    try:
        while not stop.is_set():
            try:
                link = open_subscribed(settings, client_id, subscription, QOS, keepalive)
            except Refused as exc:
                log.error("broker %s refused the service: %s", address.url, exc)
                if exc.fatal:
                    raise BrokerRefused(str(exc)) from None
                stop.wait(backoff)
                backoff = min(max_backoff, backoff * 2)
                continue
            except OSError as exc:  # refused, unreachable, TLS handshake failed, lost
                log.warning("cannot reach broker %s: %s", address.url, exc)
                stop.wait(backoff)
                backoff = min(max_backoff, backoff * 2)
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
            lost = False
            try:
                while not stop.is_set():
                    if worker is not None and worker.busy:
                        linger = 0.2  # its commit wakes us
                    elif pending:
                        linger = first_at + batch_window - time.monotonic()
                    else:
                        linger = 0.2
                    arrived = link.poll(max(0.0, linger), wake_r)
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 4096)
                    if arrived:
                        now = handler.clock()
                        if not pending:
                            first_at = time.monotonic()
                        pending.extend(
                            Delivery(m.topic, m.payload, m.packet_id, m.qos, now) for m in arrived
                        )
                    if worker is None:
                        if due(len(arrived)):
                            handler.handle_batch(take())
                    else:
                        finished, recorded = worker.poll()
                        if finished and recorded is None:
                            handler.fail()
                        if not worker.busy and not handler.broken and due(len(arrived)):
                            # The next batch first: it is recorded while this thread sends
                            # the acks of the one just committed (and goes on receiving).
                            worker.submit(take())
                        if recorded is not None:
                            handler.answer_batch(recorded)
                    link.flush()
                    if handler.broken:
                        break
                    if stats.handled > handled:  # progress: the next failure retries quickly
                        handled, backoff = stats.handled, 0.2
            except ConnectionLost as exc:
                log.warning("connection to %s lost: %s", address.url, exc)
                lost = True
            if worker is not None and worker.busy:
                # Leaving this connection with a batch being recorded: wait for its commit.
                # Its acks go out only on this connection, while it is still up (a
                # packet id means nothing on the next one; the broker redelivers those
                # messages and they are recorded as duplicates).
                finished, recorded = worker.wait()
                if not lost:
                    _settle(handler, recorded)
                    with contextlib.suppress(ConnectionLost):
                        link.flush()
            handler.transport = _Unconnected()
            if handler.broken or lost:
                link.abort()  # the broker will redeliver what is unacked
            else:
                link.close()
            if not stop.is_set():
                stop.wait(backoff)
                backoff = min(max_backoff, backoff * 2)
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


def _settle(handler: ReadHandler, recorded: Recorded | None) -> None:
    if recorded is None:
        handler.fail()
    else:
        handler.answer_batch(recorded)


class _BatchWorker:
    """Records batches on ledger threads of its own, one batch at a time, in the order
    submitted, so the connection's thread keeps receiving (and acknowledging the previous
    batch) while a transaction runs. It never touches the connection: the connection's
    thread sends a batch's acks after it sees the batch committed (``on_done`` tells it
    that a part finished).

    With ``lanes`` > 1 a batch is split by lot into that many parts, each recorded in a
    transaction of its own on its own thread (and database connection): one part's round
    trips to the database overlap another's work. The ledger locks by lot, so the parts
    never wait on each other; the batch counts as committed when every part is, and its
    acks keep the order of arrival. A failed part fails the batch (the parts that did
    commit are redelivered, unacknowledged, and recorded as duplicates)."""

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
        self._jobs: list[queue.Queue[tuple[int, list[int], list[Delivery]] | None]] = [
            queue.Queue() for _ in range(lanes)
        ]
        self._done: queue.Queue[tuple[int, list[int], Recorded | None]] = queue.Queue()
        self.busy = False
        self._batch: list[Delivery] = []
        self._parts: list[tuple[list[int], Recorded | None]] = []
        self._expected = 0
        self._serial = 0
        self._threads = [
            threading.Thread(
                target=self._run,
                args=(jobs, self._remotes[i].record_many if self._remotes else None),
                name=f"parking-ledger-{i}",
                daemon=True,
            )
            for i, jobs in enumerate(self._jobs)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, batch: list[Delivery]) -> None:
        assert not self.busy, "one batch at a time"
        self.busy = True
        self._serial += 1
        self._batch = batch
        self._parts = []
        parts = _split_by_lot(batch, len(self._jobs), self._handler.root)
        self._expected = len(parts)
        for jobs, indices in zip(self._jobs, parts, strict=False):
            jobs.put((self._serial, indices, [batch[i] for i in indices]))

    def poll(self) -> tuple[bool, Recorded | None]:
        """(True, what was committed or None on failure) once the batch is done."""
        return self._collect(block=False)

    def wait(self) -> tuple[bool, Recorded | None]:
        return self._collect(block=True)

    def close(self) -> None:
        self.wait()
        for jobs in self._jobs:
            jobs.put(None)
        for thread in self._threads:
            thread.join()
        for remote in self._remotes:
            remote.close()

    def _collect(self, block: bool) -> tuple[bool, Recorded | None]:
        if not self.busy:
            return False, None
        while len(self._parts) < self._expected:
            try:
                serial, indices, recorded = self._done.get(block=block)
            except queue.Empty:
                return False, None
            if serial == self._serial:
                self._parts.append((indices, recorded))
        self.busy = False
        if any(recorded is None for _, recorded in self._parts):
            return True, None
        if len(self._parts) == 1:
            return True, self._parts[0][1]
        plans: list[tuple[str, RecordOutcome, AckPlan] | None] = [None] * len(self._batch)
        for indices, recorded in self._parts:
            assert recorded is not None
            for i, plan in zip(indices, recorded.plans, strict=True):
                plans[i] = plan
        return True, Recorded(tuple(self._batch), tuple(plans))

    def _run(
        self,
        jobs: queue.Queue[tuple[int, list[int], list[Delivery]] | None],
        record_many: RecordMany | None,
    ) -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            serial, indices, deliveries = job
            recorded: Recorded | None = None
            try:
                recorded = self._handler.record_batch(deliveries, record_many)
            finally:
                self._done.put((serial, indices, recorded))
                self._on_done()


def _split_by_lot(batch: Sequence[Delivery], lanes: int, root: str) -> list[list[int]]:
    """Indices of ``batch`` in at most ``lanes`` non-empty parts, all of a lot's messages
    in one part (in arrival order), the parts about equally large. A small batch stays
    whole: each transaction has a fixed cost (a dozen statements), which only a large
    part repays."""
    lanes = min(lanes, len(batch) // MIN_PART)
    if lanes <= 1:
        return [list(range(len(batch)))]
    by_lot: dict[str | None, list[int]] = {}
    for i, d in enumerate(batch):
        by_lot.setdefault(lot_of_topic(d.topic, "reads", root), []).append(i)
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
