"""The payment outbox: one instruction per charge or refund, written with it; sent until
answered, through a real broker to the reference adapter; exactly once under kill -9 of
the dispatcher and of the adapter, and across broker restarts. On both backends (fixtures
of ``test_parking_ledger``; brokers as in ``test_parking_mqtt``)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from citybrain.parking.ledger import Ledger, RecordItem, open_ledger
from citybrain.parking.office import BackOffice
from citybrain.parking.outbox import run_dispatcher
from citybrain.parking.payadapter import DeclineRules, run_adapter
from citybrain.parking.payments import (
    MAX_RESEND_S,
    Answer,
    PaymentError,
    next_send,
    parse_answer,
    parse_order,
)
from citybrain.parking.settings import ParkingSettings, PaymentSettings
from tests import test_parking_ledger as shared
from tests import test_parking_mqtt as mq
from tests.brokers import own_broker
from tests.test_parking_ledger import at, read_msg

backend = shared.backend
fresh_url = shared.fresh_url
ledger_factory = shared.ledger_factory
ledger = shared.ledger
mqtt_url = mq.mqtt_url
sessions = mq.sessions
root = mq.root

ROOT = Path(__file__).resolve().parent.parent
FAST = ParkingSettings(payments=PaymentSettings(resend_after_s=1.0, batch=20))


def stays(ledger: Ledger, cars: int, *, blocked_every: int = 0) -> list[str]:
    """``cars`` bound stays at L01 (95 minutes: 20.00 each); every ``blocked_every``-th
    plate's account is ``blocked-...``. Returns the charges' keys."""
    items = []
    for car in range(cars):
        plate = f"浙A{car:05d}"
        blocked = blocked_every and car % blocked_every == 0
        ledger.bind(plate, f"{'blocked' if blocked else 'acct'}-{car}", at=at(-1))
        t = at(car)
        for rid, direction, when in (
            (f"c{car}-in", "in", t),
            (f"c{car}-out", "out", t + timedelta(minutes=95)),
        ):
            items.append(RecordItem("L01", read_msg(rid, direction, plate, when), when))
    ledger.record_many(items)
    return [c.key for c in ledger.charges()]


def outbox_keys(ledger: Ledger) -> set[str]:
    with ledger.engine.connect() as conn:
        keys = {row[0] for row in conn.execute(text("SELECT key FROM payment_outbox"))}
        conn.rollback()
    return keys


def results(ledger: Ledger) -> list[tuple[str, str]]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(text("SELECT key, status FROM payment_result")).all()
        conn.rollback()
    return sorted((str(k), str(s)) for k, s in rows)


# ---- pure -------------------------------------------------------------------------------


def test_the_contract_messages_and_the_resend_schedule() -> None:
    order = parse_order(
        json.dumps(
            {
                "key": "charge:L01/a:1",
                "kind": "charge",
                "account": "acct",
                "cents": 2500,
                "currency": "CNY",
                "session_id": "L01/a",
                "lot_id": "L01",
                "created_at": "2026-11-22T02:31:00+00:00",
            }
        ).encode()
    )
    assert (order.kind, order.cents, order.account) == ("charge", 2500, "acct")
    for bad in (b"[]", b"{}", b'{"key": "k", "kind": "charge", "cents": 0}', b"\xff"):
        with pytest.raises(PaymentError):
            parse_order(bad)
    answer = Answer("charge:L01/a:1", "declined", "card expired", "psp-1")
    assert parse_answer(answer.payload()) == answer
    with pytest.raises(PaymentError, match="paid or declined"):
        parse_answer(b'{"key": "k", "status": "maybe"}')
    now = datetime(2026, 11, 22, tzinfo=UTC)
    waits = [(next_send(now, n, 30.0) - now).total_seconds() for n in (1, 2, 3, 10, 50)]
    assert waits == [30.0, 60.0, 120.0, MAX_RESEND_S, MAX_RESEND_S]
    rules = DeclineRules(("blocked-*",), over_cents=5000)
    assert rules.decide(order) == ("paid", "")
    assert rules.decide(order.__class__(**{**vars(order), "account": "blocked-9"}))[0] == "declined"
    assert rules.decide(order.__class__(**{**vars(order), "cents": 5001}))[0] == "declined"
    refund = order.__class__(**{**vars(order), "kind": "refund", "account": "blocked-9"})
    assert rules.decide(refund) == ("paid", "")  # refunds are always paid back


# ---- the outbox in the ledger ------------------------------------------------------------


def test_every_charge_and_refund_writes_one_instruction(ledger: Ledger) -> None:
    keys = stays(ledger, 3)
    assert outbox_keys(ledger) == set(keys)
    back = BackOffice(ledger, FAST)
    first = back.claim_payments(at(200), 10)
    assert sorted(i.key for i in first) == sorted(keys) and {i.sends for i in first} == {1}
    assert back.claim_payments(at(200), 10) == []  # due again after the resend interval
    again = back.claim_payments(at(200) + timedelta(seconds=1), 10)
    assert {i.sends for i in again} == {2}
    assert back.claim_payments(at(200) + timedelta(seconds=2), 10) == []  # doubled: 2 s
    outcomes = back.record_payments(
        [Answer(keys[0], "paid"), Answer(keys[1], "declined", "no funds"), Answer("nope", "paid")],
        at=at(201),
    )
    assert [None if o is None else (o.again, o.debt) for o in outcomes] == [
        (False, False),
        (False, True),
        None,
    ]
    assert outbox_keys(ledger) == {keys[2]}
    # the debt collected again, and a refund of the paid one: one instruction each
    session = keys[1].split(":")[1]
    collected = ledger.bind(f"浙A{1:05d}", "acct-1-new", at=at(300))
    assert [c.key for c in collected.charges] == [f"charge:{session}:2"]
    refund = back.refund(keys[0].split(":")[1], 700, operator="ana", reason="goodwill")
    assert outbox_keys(ledger) == {keys[2], f"charge:{session}:2", refund.record.key}  # type: ignore[union-attr]
    again_outcomes = back.record_payments([Answer(keys[0], "declined")])
    assert again_outcomes[0] is not None and again_outcomes[0].again  # the first answer counts
    assert dict(results(ledger))[keys[0]] == "paid"


# ---- through a broker --------------------------------------------------------------------


class Running:
    """A function run on a thread with a stop event, its result kept."""

    def __init__(self, target: Callable[..., Any], **kw: Any) -> None:
        self.stop, self.ready = threading.Event(), threading.Event()
        self.result: list[Any] = []
        self.thread = threading.Thread(
            target=lambda: self.result.append(
                target(stop=self.stop, on_ready=self.ready.set, **kw)
            ),
            daemon=True,
        )
        self.thread.start()
        assert self.ready.wait(15)

    def close(self) -> Any:
        self.stop.set()
        self.thread.join(15)
        assert not self.thread.is_alive()
        return self.result[0]


def book_rows(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as db:
        return sorted(db.execute("SELECT key, status FROM answer").fetchall())


def test_instructions_reach_the_adapter_and_answers_come_back(
    ledger: Ledger, mqtt_url: str, sessions: mq.Sessions, root: str, tmp_path: Path
) -> None:
    keys = stays(ledger, 30, blocked_every=5)
    back = BackOffice(ledger, FAST)
    book = tmp_path / "adapter.db"
    rules = DeclineRules(("blocked-*",))
    adapter = Running(
        run_adapter,
        broker_url=mqtt_url,
        book=book,
        rules=rules,
        client_id=sessions.new("adapter"),
        topic_root=root,
    )
    dispatcher = Running(
        run_dispatcher,
        office=back,
        broker_url=mqtt_url,
        client_id=sessions.new("pay"),
        topic_root=root,
    )
    try:
        mq.wait_until(lambda: len(results(ledger)) == len(keys), 30, "every answer")
        mq.wait_until(lambda: not outbox_keys(ledger), 10, "an empty outbox")
    finally:
        stats = dispatcher.close()
        adapter_stats = adapter.close()
    got = dict(results(ledger))
    assert sorted(got) == sorted(keys)
    declined = {k for k, s in got.items() if s == "declined"}
    assert len(declined) == 6 and stats.debts == 6 and adapter_stats.declined == 6
    assert book_rows(book) == sorted(got.items())  # one answer per key, the same one
    assert len(ledger.debts()) == 6


def dispatcher_main() -> None:
    """Subprocess entry: a dispatcher over the ledger at CB_DB."""
    ledger = open_ledger(os.environ["CB_DB"])
    run_dispatcher(
        BackOffice(ledger, FAST),
        os.environ["CB_URL"],
        client_id=os.environ["CB_CLIENT"],
        topic_root=os.environ["CB_ROOT"],
        on_ready=lambda: print("READY", flush=True),
        max_backoff=0.5,
    )


def adapter_main() -> None:
    """Subprocess entry: the reference adapter, declining blocked-* accounts, slowly (so
    that a kill meets it mid-stream)."""
    import citybrain.parking.payadapter as pay

    original = pay.AnswerBook.answer_many

    def slow(self: Any, orders: Any, rules: Any) -> Any:
        time.sleep(0.01 * len(orders))
        return original(self, orders, rules)

    pay.AnswerBook.answer_many = slow  # type: ignore[method-assign]
    run_adapter(
        os.environ["CB_URL"],
        Path(os.environ["CB_BOOK"]),
        DeclineRules(("blocked-*",)),
        client_id=os.environ["CB_CLIENT"],
        topic_root=os.environ["CB_ROOT"],
        on_ready=lambda: print("READY", flush=True),
        max_backoff=0.5,
    )


def spawn(entry: str, **env: str) -> subprocess.Popen[bytes]:
    code = f"from tests.test_parking_payments import {entry}; {entry}()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE
    )
    mq.wait_ready(proc, timeout=30)
    return proc


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    running: list[subprocess.Popen[bytes]] = []
    yield running
    for p in running:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_kill9_of_dispatcher_and_adapter_pays_each_charge_once(
    fresh_url: Callable[[], str],
    mqtt_url: str,
    sessions: mq.Sessions,
    root: str,
    tmp_path: Path,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    db = fresh_url()
    ledger = open_ledger(db)
    keys = stays(ledger, 150, blocked_every=7)
    book = tmp_path / "adapter.db"
    common = {"CB_URL": mqtt_url, "CB_ROOT": root}
    pay_env = {**common, "CB_DB": db, "CB_CLIENT": sessions.new("pay")}
    adapter_env = {**common, "CB_BOOK": str(book), "CB_CLIENT": sessions.new("adapter")}
    procs.append(spawn("adapter_main", **adapter_env))
    procs.append(spawn("dispatcher_main", **pay_env))
    for round_ in range(3):  # kill each mid-stream, then start it again with its session
        enough = (round_ + 1) * 25
        mq.wait_until(lambda n=enough: len(results(ledger)) > n, 30, "answers")  # type: ignore[misc]
        victim = procs.pop(round_ % 2)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        entry, env = (
            ("adapter_main", adapter_env) if round_ % 2 == 0 else ("dispatcher_main", pay_env)
        )
        procs.insert(round_ % 2, spawn(entry, **env))
    mq.wait_until(lambda: len(results(ledger)) == len(keys), 60, "every answer")
    mq.wait_until(lambda: not outbox_keys(ledger), 10, "an empty outbox")
    got = results(ledger)
    assert [k for k, _ in got] == sorted(keys)  # one answer per charge
    assert book_rows(book) == got  # the adapter moved money once per key, as recorded
    assert sum(1 for _, s in got if s == "declined") == len(ledger.debts()) == 22
    ledger.close()


@pytest.mark.parametrize("backend", ["sqlite"])  # the broker's part: one backend is enough
def test_broker_restarts_lose_no_instruction_nor_answer(
    ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import citybrain.parking.payadapter as pay

    keys = stays(ledger, 80)
    back = BackOffice(ledger, FAST)
    book = tmp_path / "adapter.db"
    original = pay.AnswerBook.answer_many

    def slow(self: Any, orders: Any, rules: Any) -> Any:  # the restarts fall mid-stream
        time.sleep(0.01 * len(orders))
        return original(self, orders, rules)

    monkeypatch.setattr(pay.AnswerBook, "answer_many", slow)
    recorded = back.record_payments

    def trickle(answers: Any, **kw: Any) -> Any:  # answers recorded one by one, slowly
        out = []
        for answer in answers:
            time.sleep(0.03)
            out.extend(recorded([answer], **kw))
        return out

    monkeypatch.setattr(back, "record_payments", trickle)
    root_ = "citybrain/parking"
    with own_broker(tmp_path / "broker") as broker:
        url = broker.url
        common: dict[str, Any] = {"broker_url": url, "topic_root": root_, "max_backoff": 0.3}
        adapter = Running(run_adapter, book=book, client_id="adapter", **common)
        dispatcher = Running(run_dispatcher, office=back, client_id="pay", **common)
        try:
            mq.wait_until(lambda: len(results(ledger)) >= 10, 30, "first answers")
            broker.stop()  # SIGTERM: Mosquitto saves its sessions
            midway = [len(results(ledger))]
            broker.start()
            mq.wait_until(lambda: len(results(ledger)) >= 40, 30, "more answers")
            broker.kill()  # SIGKILL: what it had not saved is gone
            midway.append(len(results(ledger)))
            broker.start()
            mq.wait_until(lambda: len(results(ledger)) == len(keys), 60, "every answer")
        finally:
            stats = dispatcher.close()
            adapter_stats = adapter.close()
    got = results(ledger)
    assert [k for k, _ in got] == sorted(keys) and {s for _, s in got} == {"paid"}
    assert book_rows(book) == got and not outbox_keys(ledger)
    assert all(n < len(keys) for n in midway), midway  # both fell mid-stream
    assert stats.connections >= 2 and adapter_stats.connections >= 2


def test_parking_serve_and_the_pay_adapter_on_the_command_line(
    mqtt_url: str, sessions: mq.Sessions, root: str, tmp_path: Path
) -> None:
    """`citybrain parking serve` (its dispatcher in a process of its own) and `citybrain
    parking pay-adapter`, as an operator starts them: a bound stay is charged, its
    instruction answered, a blocked account's charge declined into a debt."""
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = open_ledger(db)
    ledger.bind("浙A12345", "acct-a", at=at(-1))
    ledger.bind("浙B12345", "blocked-b", at=at(-1))
    cli = [sys.executable, "-m", "citybrain.cli", "parking"]
    common = ["--broker", mqtt_url, "--topic-root", root]
    serve = subprocess.Popen(
        [*cli, "serve", "--db", db, "--client-id", sessions.new("svc"), *common]
    )
    adapter = subprocess.Popen(
        [
            *cli,
            "pay-adapter",
            "--book",
            str(tmp_path / "book.db"),
            "--decline-account",
            "blocked-*",
            "--client-id",
            sessions.new("adapter"),
            *common,
        ]
    )
    sessions.ids.append(f"{sessions.ids[0]}-payments")

    def stored() -> int:
        with ledger.engine.connect() as conn:
            n = int(conn.execute(text("SELECT count(*) FROM read")).scalar_one())
            conn.rollback()
        return n

    try:
        pub = mq.Publisher(mqtt_url)
        try:
            reads = [
                read_msg(rid, direction, plate, at(minute))
                for plate, car in (("浙A12345", "a"), ("浙B12345", "b"))
                for rid, direction, minute in ((f"{car}-in", "in", 0), (f"{car}-out", "out", 95))
            ]
            deadline = time.monotonic() + 60
            while stored() < len(reads):  # sent again until stored, as a gateway does
                assert time.monotonic() < deadline and serve.poll() is None
                for body in reads:
                    pub.publish(f"{root}/L01/reads", body)
                time.sleep(0.5)
        finally:
            pub.close()
        mq.wait_until(lambda: len(results(ledger)) == 2, 60, "both answers")
    finally:
        for proc in (serve, adapter):
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    assert sorted(s for _, s in results(ledger)) == ["declined", "paid"]
    assert [d.plate for d in ledger.debts()] == ["浙B12345"]
    assert serve.returncode == 0 and adapter.returncode == 0
    ledger.close()
