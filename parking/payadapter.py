"""A reference payment adapter: the payment side of the contract
(``citybrain.parking.payments``), for the demo, tests and trials. A real provider's
adapter does the same with real money.

It takes instructions from ``{root}/payments/instructions`` on a persistent session,
decides each by its rules (``DeclineRules``: accept everything, or decline the charges of
accounts that match a pattern, or above an amount), keeps the answer of each key in a
SQLite file of its own (``AnswerBook``: keeping it is "moving the money"), publishes the
answer on ``{root}/payments/results`` and only then PUBACKs the instruction. An
instruction whose key it knows (a resend, a redelivery after a crash) gets the same answer
again and moves no money again. Killed at any point, it answers every key once: before
its commit nothing happened and the instruction is redelivered; after it the answer is
kept and sent again.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from citybrain.mqtt.address import BrokerSettings
from citybrain.mqtt.backoff import hold_subscription
from citybrain.mqtt.link import Link
from citybrain.mqtt.wire import Publish
from citybrain.parking.mqtt import QOS, TOPIC_ROOT
from citybrain.parking.payments import (
    Answer,
    Order,
    PaymentError,
    instructions_topic,
    parse_order,
    results_topic,
)

log = logging.getLogger(__name__)

ADAPTER_CLIENT_ID = "citybrain-payment-adapter"


@dataclass(frozen=True)
class DeclineRules:
    """Which charges the adapter declines (refunds are always paid back)."""

    accounts: tuple[str, ...] = ()  # shell-style patterns of account names ("blocked-*")
    over_cents: int | None = None  # charges above this amount

    def decide(self, order: Order) -> tuple[str, str]:
        """``(status, detail)`` of an instruction never seen before."""
        if order.kind == "charge":
            for pattern in self.accounts:
                if fnmatch.fnmatchcase(order.account, pattern):
                    return "declined", f"account {order.account} matches {pattern!r}"
            if self.over_cents is not None and order.cents > self.over_cents:
                return "declined", f"{order.cents} cents is over the limit of {self.over_cents}"
        return "paid", ""


class AnswerBook:
    """The adapter's own record: one answer per key, kept before it is sent."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS answer (key TEXT PRIMARY KEY, kind TEXT, "
            "account TEXT, cents INTEGER, status TEXT, detail TEXT, reference TEXT, "
            "answered_at TEXT)"
        )

    def answer(self, order: Order, rules: DeclineRules) -> tuple[Answer, bool]:
        """The answer to ``order``, and whether it is new (money moved now)."""
        return self.answer_many([order], rules)[0]

    def answer_many(
        self, orders: Sequence[Order], rules: DeclineRules
    ) -> list[tuple[Answer, bool]]:
        """The answers to ``orders``, kept in one transaction (one fsync for a burst)."""
        db = self.db
        out: list[tuple[Answer, bool]] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for order in orders:
                found = db.execute(
                    "SELECT status, detail, reference FROM answer WHERE key = ?", (order.key,)
                ).fetchone()
                if found is not None:
                    out.append((Answer(order.key, found[0], found[1], found[2]), False))
                    continue
                status, detail = rules.decide(order)
                reference = "ref-" + hashlib.sha256(order.key.encode()).hexdigest()[:12]
                db.execute(
                    "INSERT INTO answer VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        order.key,
                        order.kind,
                        order.account,
                        order.cents,
                        status,
                        detail,
                        reference,
                        datetime.now(UTC).isoformat(),
                    ),
                )
                out.append((Answer(order.key, status, detail, reference), True))
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        return out

    def close(self) -> None:
        self.db.close()


@dataclass
class AdapterStats:
    answered: int = 0  # keys answered for the first time
    repeated: int = 0  # instructions of keys answered before
    declined: int = 0
    malformed: int = 0
    connections: int = 0


def run_adapter(
    broker_url: str,
    book: Path,
    rules: DeclineRules = DeclineRules(),
    *,
    client_id: str = ADAPTER_CLIENT_ID,
    topic_root: str = TOPIC_ROOT,
    username: str | None = None,
    password: str | None = None,
    ca_file: str | None = None,
    keepalive: int = 30,
    stop: threading.Event | None = None,
    on_ready: Callable[[], None] | None = None,
    max_backoff: float = 10.0,
) -> AdapterStats:
    """Answer instructions until ``stop`` is set (see the module docstring)."""
    settings = BrokerSettings.from_url(
        broker_url, username=username, password=password, ca_file=ca_file
    )
    answers = AnswerBook(book)
    stats = AdapterStats()
    results = results_topic(topic_root).encode()
    halt = stop if stop is not None else threading.Event()

    def work(link: Link, progress: Callable[[], None]) -> None:
        while not halt.is_set():
            arrived = link.poll(0.2)
            orders: list[tuple[Publish, Order]] = []
            for message in arrived:
                try:
                    orders.append((message, parse_order(message.payload)))
                except PaymentError as exc:
                    log.warning("adapter: ignoring a malformed instruction: %s", exc)
                    stats.malformed += 1
            # kept first (one transaction), then answered, then acknowledged
            done = answers.answer_many([o for _, o in orders], rules) if orders else []
            for answer, new in done:
                stats.answered += new
                stats.repeated += not new
                stats.declined += new and answer.status == "declined"
                link.publish(results, answer.payload(), QOS)
            for message in arrived:
                link.ack(message.packet_id, message.qos)
            link.flush()
            progress()

    try:
        stats.connections = hold_subscription(
            settings,
            client_id,
            instructions_topic(topic_root),
            work,
            stop=halt,
            who="the payment adapter",
            log=log,
            keepalive=keepalive,
            on_ready=on_ready,
            max_backoff=max_backoff,
        )
    finally:
        answers.close()
    return stats
