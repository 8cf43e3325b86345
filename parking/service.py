"""The parking service's MQTT side: take reads off the broker, record them, acknowledge.

Why no read is lost and none is charged twice, even under ``kill -9``:

1. The service holds a persistent session (fixed client id, ``clean_session=False``) with
   a QoS 1 subscription to every lot's reads, so the broker keeps each delivery until the
   service sends its PUBACK, across disconnects and process deaths, and redelivers the
   unacknowledged ones when the session resumes.
2. paho runs with ``manual_ack=True``: receiving a message sends nothing back. The handler
   first records the message (one committed database transaction, idempotent by
   ``read_id``), then publishes the gateway ack, and only then ``client.ack(mid)``.
   Deliveries are batched: the service takes what arrives within ``batch_window`` seconds
   of the first pending message (and whatever is already waiting on the socket then), up
   to ``batch_size`` messages, records them in ONE transaction (``record_many``), and only
   after its commit publishes the gateway acks and acks each message to the broker, in
   the order they arrived. A sink without ``record_many`` is called once per message,
   each acked right after its own commit, on the network thread. With ``record_many``
   the transaction runs on a ledger thread (one batch at a time, in order) while the
   network thread keeps receiving; the ledger thread never touches the connection: the
   network thread sends a batch's acks once it sees the batch committed (after handing
   the next batch to the ledger thread, so that one is recorded meanwhile), and only on the
   connection the batch came in on (a batch still being recorded when the connection
   drops is waited for and its acks are dropped: the broker redelivers those messages,
   recorded as duplicates). So no ack can leave before its commit or go to a later
   connection. The acks to the gateways may all be in flight at once (paho's window of
   20 QoS 1 publishes would hold a large batch's acks back).
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

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from citybrain.parking.broker import FATAL_CONNACK, BrokerSettings, make_client
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
class BatchReadSink(ReadSink, Protocol):
    def record_many(self, items: Sequence[tuple[str, bytes, datetime]]) -> Sequence[RecordOutcome]:
        """Record ``(topic_lot, payload, received_at)`` messages in ONE transaction, with
        the outcomes ``record`` would give one after the other, in order. Returns after
        the commit; raises when nothing could be committed (none of them is stored)."""
        ...


DEFAULT_BATCH_SIZE = 200
DEFAULT_BATCH_WINDOW = 0.005  # seconds


@dataclass(frozen=True)
class Delivery:
    """One message as paho handed it over (not yet acknowledged)."""

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
    """The part of paho's ``Client`` the handler uses."""

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

    def record_batch(self, deliveries: Sequence[Delivery]) -> Recorded | None:
        """The database half of ``handle_batch`` (any thread; touches no transport and no
        shared state): record the deliveries in ONE transaction (``record_many``) and plan
        their acks. None when nothing was committed. The sink must batch."""
        sink = self.sink
        assert isinstance(sink, BatchReadSink)
        lots = [lot_of_topic(d.topic, "reads", self.root) for d in deliveries]
        now = self.clock()
        items = [
            (lot, d.payload, now if d.received_at is None else d.received_at)
            for d, lot in zip(deliveries, lots, strict=True)
            if lot is not None
        ]
        try:
            outcomes = list(sink.record_many(items)) if items else []
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
    client = make_client(settings, client_id, clean_session=False, manual_ack=True)
    stats = ServiceStats()
    handler = ReadHandler(sink, client, root=topic_root, stats=stats)
    subscription = all_reads_filter(topic_root)
    refused: list[str] = []
    state = {"sub_mid": -1}

    def on_connect(
        c: Client, _u: Any, flags: ConnectFlags, rc: ReasonCode, _p: Properties | None
    ) -> None:
        if rc.is_failure:
            log.error("broker %s refused the connection: %s", address.url, rc)
            if rc.value in FATAL_CONNACK:
                refused.append(f"connection refused: {rc}")
            return
        stats.connections += 1
        log.info(
            "connected to %s as %s (session %s)",
            address.url,
            client_id,
            "resumed" if flags.session_present else "new",
        )
        _, mid = c.subscribe(subscription, qos=QOS)
        state["sub_mid"] = -1 if mid is None else mid

    def on_subscribe(
        _c: Client, _u: Any, mid: int, codes: list[ReasonCode], _p: Properties | None
    ) -> None:
        if mid != state["sub_mid"]:
            return
        if any(code.is_failure for code in codes):
            refused.append(f"subscription to {subscription} refused (check the ACL)")
            return
        log.info("subscribed to %s", subscription)
        if on_ready is not None:
            on_ready()

    pending: list[Delivery] = []  # received, not yet recorded nor acknowledged
    first_at = [0.0]  # monotonic arrival of pending[0]

    def on_message(_c: Client, _u: Any, message: MQTTMessage) -> None:
        if not pending:
            first_at[0] = time.monotonic()
        pending.append(
            Delivery(
                message.topic, bytes(message.payload), message.mid, message.qos, handler.clock()
            )
        )

    def on_disconnect(
        _c: Client, _u: Any, _f: DisconnectFlags, rc: ReasonCode, _p: Properties | None
    ) -> None:
        log.info("disconnected from %s: %s", address.url, rc)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.on_disconnect = on_disconnect

    # The acks to the gateways are QoS 1 publishes: paho's default window (20 in flight)
    # would hold a batch's acks back until the broker's PUBACKs for earlier ones are read.
    client.max_inflight_messages_set(ACK_WINDOW)
    worker = _BatchWorker(handler) if isinstance(sink, BatchReadSink) else None

    def due(waiting: int) -> bool:
        """A batch is ready: full, or its window passed with nothing more arriving."""
        return bool(pending) and (
            len(pending) >= batch_size
            or (len(pending) == waiting and time.monotonic() >= first_at[0] + batch_window)
        )

    def take() -> list[Delivery]:
        batch = pending[:batch_size]
        del pending[:batch_size]
        if pending:
            first_at[0] = time.monotonic()
        return batch

    backoff = 0.2
    handled = 0
    try:
        while not stop.is_set():
            try:
                client.connect(address.host, address.port, keepalive=keepalive)
            except OSError as exc:  # refused, unreachable, TLS handshake failed
                log.warning("cannot reach broker %s: %s", address.url, exc)
                stop.wait(backoff)
                backoff = min(max_backoff, backoff * 2)
                continue
            handler.reset()
            pending.clear()  # a new connection: the broker redelivers what was unacked
            lost = False
            while not stop.is_set():
                waiting = len(pending)
                if worker is not None and worker.busy:
                    linger = WORKER_POLL  # its commit is acked as soon as it is seen
                elif waiting:
                    linger = first_at[0] + batch_window - time.monotonic()
                else:
                    linger = 0.2
                rc = client.loop(timeout=max(0.0, linger))
                if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and len(pending) > waiting:
                    rc = _drain(client, pending)
                if refused:
                    raise BrokerRefused(refused[0])
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    log.warning("connection to %s lost: %s", address.url, rc)
                    lost = True
                    break
                if worker is None:
                    if due(waiting):
                        handler.handle_batch(take())
                else:
                    finished, recorded = worker.poll()
                    if finished and recorded is None:
                        handler.fail()
                    if not worker.busy and not handler.broken and due(waiting):
                        # The next batch first: it is recorded while this thread sends
                        # the acks of the one just committed (and goes on receiving).
                        worker.submit(take())
                    if recorded is not None:
                        handler.answer_batch(recorded)
                if handler.broken:
                    break
                if stats.handled > handled:  # progress: the next failure retries quickly
                    handled, backoff = stats.handled, 0.2
            if worker is not None and worker.busy:
                # Leaving this connection with a batch being recorded: wait for its commit.
                # Its acks go out only on this connection, while it is still up (a
                # message id means nothing on the next one; the broker redelivers those
                # messages and they are recorded as duplicates).
                finished, recorded = worker.wait()
                if not lost and client.is_connected():
                    _settle(handler, recorded)
            if handler.broken or lost:
                # Drop the connection: the broker will redeliver what is unacked.
                _close_gently(client)
            if not stop.is_set():
                stop.wait(backoff)
                backoff = min(max_backoff, backoff * 2)
    finally:
        if worker is not None:
            worker.close()
        _close_gently(client)
    return stats


ACK_WINDOW = 10_000  # QoS 1 acks the service may have in flight to the broker
DRAIN_PACKETS = 200  # packets read in a row (no select) while messages stream in
WORKER_POLL = 0.002  # seconds: how often the network loop looks for the worker's commit


def _drain(client: Client, pending: list[Delivery], most: int = DRAIN_PACKETS) -> MQTTErrorCode:
    """Messages are streaming in: read the packets already on the socket without a
    ``select`` each (``loop`` reads one packet per call when none of our publishes is in
    flight). Stops when a read brought no new message (nothing left, or another packet)."""
    for _ in range(most):
        before = len(pending)
        rc = client.loop_read()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or len(pending) == before:
            return rc
    return MQTTErrorCode.MQTT_ERR_SUCCESS


def _settle(handler: ReadHandler, recorded: Recorded | None) -> None:
    if recorded is None:
        handler.fail()
    else:
        handler.answer_batch(recorded)


class _BatchWorker:
    """Records batches on a thread of its own, one at a time, in the order submitted, so
    the connection's thread keeps receiving (and acknowledging the previous batch) while
    a transaction runs. It never touches the connection: the connection's thread sends
    a batch's acks after it sees the batch committed."""

    def __init__(self, handler: ReadHandler) -> None:
        self._handler = handler
        self._jobs: queue.Queue[list[Delivery] | None] = queue.Queue()
        self._done: queue.Queue[Recorded | None] = queue.Queue()
        self.busy = False
        self._thread = threading.Thread(target=self._run, name="parking-ledger", daemon=True)
        self._thread.start()

    def submit(self, batch: list[Delivery]) -> None:
        assert not self.busy, "one batch at a time"
        self.busy = True
        self._jobs.put(batch)

    def poll(self) -> tuple[bool, Recorded | None]:
        """(True, what was committed or None on failure) once the batch is done."""
        if not self.busy:
            return False, None
        try:
            recorded = self._done.get_nowait()
        except queue.Empty:
            return False, None
        self.busy = False
        return True, recorded

    def wait(self) -> tuple[bool, Recorded | None]:
        if not self.busy:
            return False, None
        recorded = self._done.get()
        self.busy = False
        return True, recorded

    def close(self) -> None:
        self.wait()
        self._jobs.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            batch = self._jobs.get()
            if batch is None:
                return
            recorded: Recorded | None = None
            try:
                recorded = self._handler.record_batch(batch)
            finally:
                self._done.put(recorded)


def _close_gently(client: Client, grace: float = 0.1) -> None:
    """Send what is queued (PUBACKs) and read what the broker already sent, then disconnect.

    Closing a socket that has unread input resets the connection, and the broker may then
    drop PUBACKs it had not read yet: harmless (they come back as duplicates), but noisy.
    """
    deadline = time.monotonic() + grace
    while client.is_connected() and time.monotonic() < deadline:
        if client.loop(timeout=0.01) != MQTTErrorCode.MQTT_ERR_SUCCESS:
            break
    if client.is_connected():
        client.disconnect()
