"""The payment outbox's dispatcher: sends the due instructions to the payment side and
records its answers (the ledger through the back office, MQTT through the link).

Exactly once, whatever dies when (``citybrain.parking.payments`` has the contract):

1. A charge or refund and its instruction (an outbox row keyed by the idempotency key) are
   written in one transaction: there is one instruction per charge or refund.
2. ``run_dispatcher`` claims the due instructions (``BackOffice.claim_payments``: marked
   sent and due again after the resend interval, doubling, in one transaction; two
   dispatchers never claim the same one at once) and publishes them at QoS 1. A death
   after the claim and before the publish only delays the instruction until it is due
   again; nothing depends on the broker's PUBACK either: an instruction is sent until an
   answer for its key is recorded, on every connection.
3. Answers come on a persistent session (a shared subscription of the services' group when
   several run): recorded in one transaction per batch (the first answer per key counts,
   a repeat changes nothing; an answered instruction leaves the outbox), and only then
   PUBACKed. A death before the commit: the broker redelivers the answers; after it: they
   are redelivered and found recorded.
4. The payment side moves money at most once per key and answers a key it knows with the
   same answer (the reference adapter, ``citybrain.parking.payadapter``, does).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.process
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from citybrain.mqtt.address import BrokerSettings
from citybrain.mqtt.backoff import hold_subscription
from citybrain.mqtt.link import Link, Refused
from citybrain.mqtt.wire import Publish
from citybrain.parking.mqtt import QOS, TOPIC_ROOT, shared
from citybrain.parking.office import BackOffice
from citybrain.parking.payments import (
    Answer,
    PaymentError,
    instructions_topic,
    parse_answer,
    results_topic,
)
from citybrain.parking.settings import ParkingSettings

log = logging.getLogger(__name__)

CLAIM_EVERY_S = 0.25  # the outbox is looked at this often (at once after a full claim)
GATHER_S = 0.1  # answers that arrive within this of the first are recorded together


class DispatcherRefused(RuntimeError):
    """The broker refused the dispatcher's credentials or subscription."""


@dataclass
class DispatchStats:
    sent: int = 0  # instructions published (first sends and resends)
    resent: int = 0  # of them, sent again
    answers: int = 0  # answers recorded (new)
    repeated: int = 0  # answers already recorded (a repeat)
    declined: int = 0  # new answers that declined
    debts: int = 0  # declined charges that made their stay a debt again
    unknown: int = 0  # answers for no instruction of the ledger, or malformed
    failures: int = 0  # transactions that failed (the connection was dropped)
    connections: int = 0


def run_dispatcher(
    office: BackOffice,
    broker_url: str,
    *,
    client_id: str,
    topic_root: str = TOPIC_ROOT,
    group: str | None = None,
    username: str | None = None,
    password: str | None = None,
    ca_file: str | None = None,
    keepalive: int = 30,
    stop: threading.Event | None = None,
    on_ready: Callable[[], None] | None = None,
    max_backoff: float = 10.0,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> DispatchStats:
    """Send the outbox's instructions and record the answers until ``stop`` is set.

    ``client_id``: this dispatcher's persistent session (answers wait there while it is
    away). ``group``: the shared subscription group of the answers when several services
    run (each answer goes to one of them; all record it alike). Reconnects by itself;
    ``DispatcherRefused`` when the credentials or the ACL are wrong."""
    settings = BrokerSettings.from_url(
        broker_url, username=username, password=password, ca_file=ca_file
    )
    pay = office.settings.payments
    stats = DispatchStats()
    topic = instructions_topic(topic_root).encode()
    halt = stop if stop is not None else threading.Event()

    def work(link: Link, progress: Callable[[], None]) -> None:
        log.info("payments: connected as %s", client_id)
        next_claim = 0.0
        while not halt.is_set():
            if time.monotonic() >= next_claim:
                due = office.claim_payments(clock(), pay.batch)
                for instruction in due:
                    link.publish(topic, instruction.payload(pay.currency), QOS)
                    stats.sent += 1
                    stats.resent += instruction.sends > 1
                link.flush()
                full = len(due) == pay.batch
                next_claim = time.monotonic() + (0.0 if full else CLAIM_EVERY_S)
            arrived = link.poll(max(0.0, next_claim - time.monotonic()))
            if arrived:
                gather_until = time.monotonic() + GATHER_S
                while len(arrived) < pay.batch and (left := gather_until - time.monotonic()) > 0:
                    arrived += link.poll(left)
                try:
                    _record(office, link, arrived, stats, pay.batch)
                except Exception:
                    # Nothing of this batch was recorded or acknowledged: the broker
                    # redelivers the answers on the next connection.
                    stats.failures += 1
                    raise
                link.flush()
                progress()

    try:
        stats.connections = hold_subscription(
            settings,
            client_id,
            shared(results_topic(topic_root), group),
            work,
            stop=halt,
            who="the payment dispatcher",
            log=log,
            keepalive=keepalive,
            on_ready=on_ready,
            max_backoff=max_backoff,
        )
    except Refused as exc:
        raise DispatcherRefused(str(exc)) from None
    return stats


def _record(
    office: BackOffice, link: Link, arrived: list[Publish], stats: DispatchStats, batch: int
) -> None:
    """Record the answers that arrived (in batches, one transaction each), then PUBACK
    them; a malformed answer is logged and acknowledged (sending it again cannot help)."""
    good: list[tuple[Publish, Answer]] = []
    for message in arrived:
        try:
            good.append((message, parse_answer(message.payload)))
        except PaymentError as exc:
            log.warning("payments: ignoring a malformed answer on %s: %s", message.topic, exc)
            stats.unknown += 1
            link.ack(message.packet_id, message.qos)
    for start in range(0, len(good), batch):
        part = good[start : start + batch]
        outcomes = office.record_payments([a for _, a in part])
        for (message, answer), done in zip(part, outcomes, strict=True):
            if done is None:
                log.warning("payments: an answer for no instruction: %r", answer.key)
                stats.unknown += 1
            elif done.again:
                stats.repeated += 1
            else:
                stats.answers += 1
                stats.declined += answer.status == "declined"
                stats.debts += done.debt
            link.ack(message.packet_id, message.qos)


def start_dispatcher(
    opener: Callable[[], Any],
    settings: ParkingSettings,
    broker_url: str,
    **options: Any,
) -> multiprocessing.process.BaseProcess:
    """``run_dispatcher`` in a process of its own (``parking serve`` runs it so: the
    service's network loop keeps its interpreter to itself), on the ledger ``opener``
    opens (``Ledger.opener``). SIGTERM stops it; it also stops when its parent dies."""
    context = multiprocessing.get_context("spawn")
    process = context.Process(
        target=_dispatcher_main,
        args=(opener, settings, broker_url, options, os.getpid()),
        name="parking-payments",
        daemon=True,
    )
    process.start()
    return process


def stop_dispatcher(process: multiprocessing.process.BaseProcess, timeout: float = 10.0) -> None:
    if process.is_alive():
        process.terminate()  # SIGTERM: it finishes what it has in hand
        process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()


def _dispatcher_main(
    opener: Callable[[], Any],
    settings: ParkingSettings,
    broker_url: str,
    options: dict[str, Any],
    parent: int,
) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the service's: it stops us

    def orphaned() -> None:
        while not stop.wait(1.0):
            if os.getppid() != parent:
                stop.set()

    threading.Thread(target=orphaned, daemon=True).start()
    ledger = opener()
    try:
        run_dispatcher(BackOffice(ledger, settings), broker_url, stop=stop, **options)
    finally:
        ledger.close()
