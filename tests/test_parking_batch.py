"""Batched recording: ``Ledger.record_many`` and the service's batches of deliveries.

* Batches give exactly what one-by-one recording gives: the same stored rows (every table)
  and the same outcomes, whatever the batch sizes, with duplicates, replays and bad
  messages mixed in, on SQLite and PostgreSQL.
* Duplicates, read-id conflicts and dead letters inside one batch.
* A batch that fails stores nothing and acknowledges nothing (gateway or broker).
* Through a real broker into a real ledger, kill -9 of a batching service at each step and
  at random moments: every read recorded once, every stay charged once.

Brokers and PostgreSQL come from the fixtures of ``test_parking_mqtt`` and
``test_parking_ledger``: with CI=true a missing service fails these tests; elsewhere they
are skipped. Nothing here asserts on timing.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from citybrain.mqtt.link import Link
from citybrain.parking.ledger import (
    DeadReason,
    Ledger,
    OutcomeKind,
    RecordItem,
    RecordOutcome,
    open_ledger,
)
from citybrain.parking.mqtt import acks_topic, reads_topic
from citybrain.parking.service import (
    Delivery,
    Outcome,
    ReadHandler,
    Recorded,
    _InOrder,
    run_service,
)

from . import test_parking_ledger as _led
from . import test_parking_mqtt as _mq
from .test_parking_ledger import Msg, at, make_stream, read_msg, snapshot
from .test_parking_mqtt import CRASH_CODE, ROOT, AckListener, Publisher, Sessions, wait_until

# The fixtures of those modules (PostgreSQL and brokers: fail with CI=true, else skip).
backend = _led.backend
fresh_url = _led.fresh_url
ledger_factory = _led.ledger_factory
ledger = _led.ledger
mqtt_url = _mq.mqtt_url
sessions = _mq.sessions
root = _mq.root

# ------------------------------------------------------------------------ batch semantics


def _items(msgs: Sequence[Msg], seed: int) -> list[RecordItem]:
    """The stream plus what a real feed has: replays (some much later), a read id reused
    for other content, bad messages (some twice), a read of a lot without a tariff."""
    rng = random.Random(seed)
    items = [RecordItem(m.lot, m.payload, m.received_at) for m in msgs]
    out: list[RecordItem] = []
    for i, item in enumerate(items):
        out.append(item)
        if rng.random() < 0.08:  # a gateway resending, right away or later
            j = rng.randrange(0, i + 1)
            out.append(items[j]._replace(received_at=item.received_at))
        if rng.random() < 0.02:
            out.append(RecordItem("L01", b"not json", item.received_at))
        if rng.random() < 0.01:
            body = json.loads(item.payload)
            body["plate"] = "浙Z99999"  # same read id, other content
            out.append(RecordItem(item.topic_lot, json.dumps(body).encode(), item.received_at))
        if rng.random() < 0.01:
            out.append(RecordItem("L01", item.payload, item.received_at))  # maybe a lot mismatch
    out.append(RecordItem("L77", read_msg("x1", "in", "浙A11111", at(0), lot="L77"), at(1)))
    return out


def _plain(outcomes: Sequence[RecordOutcome]) -> list[tuple[Any, ...]]:
    return [(o.kind, o.read_id, o.reason, o.sessions) for o in outcomes]


def _bind_some(ledger: Ledger, msgs: Sequence[Msg]) -> None:
    for plate in sorted({m.plate for m in msgs})[::2]:
        ledger.bind(plate, f"acct-{plate}", at=at(-1))


def _in_random_batches(
    ledger: Ledger,
    items: Sequence[RecordItem],
    rng: random.Random,
    sizes: Sequence[int],
    expire: float = 0.0,
) -> list[RecordOutcome]:
    """``record_many`` over ``items`` in batches of sizes drawn from ``sizes``; after a
    batch, with probability ``expire``, an expiry at its last arrival."""
    outcomes: list[RecordOutcome] = []
    start = 0
    while start < len(items):
        batch = items[start : start + rng.choice(sizes)]
        outcomes.extend(ledger.record_many(batch))
        start += len(batch)
        if rng.random() < expire:
            ledger.expire(batch[-1].received_at)
    return outcomes


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_batches_of_random_sizes_store_what_one_by_one_stores(
    ledger_factory: Callable[..., Ledger], seed: int
) -> None:
    msgs = make_stream(500, seed=seed)
    items = _items(msgs, seed)
    one = ledger_factory()
    _bind_some(one, msgs)
    singles = [one.record(i.topic_lot, i.payload, i.received_at) for i in items]
    many = ledger_factory()
    _bind_some(many, msgs)
    batched = _in_random_batches(many, items, random.Random(seed), (1, 2, 3, 7, 20, 64, 200))
    assert _plain(batched) == _plain(singles)
    kinds = {o.kind for o in singles}
    assert kinds == {OutcomeKind.RECORDED, OutcomeKind.DUPLICATE, OutcomeKind.DEAD_LETTER}
    assert snapshot(many) == snapshot(one)
    assert [c.session_id for c in many.charges()] == [c.session_id for c in one.charges()]


@pytest.mark.parametrize("seed", [5, 6, 7, 8])
def test_loading_a_keys_recent_history_decides_what_its_whole_history_decides(
    ledger_factory: Callable[..., Ledger], seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A batch loads the open stays of its keys, those that entered or left since its
    # earliest read (or pending exit) minus two windows, the latest earlier one per
    # plate, and the holders of its passages; not the whole history. Same outcomes, same
    # stored rows, same charges as loading every stay of the key, with returning cars,
    # look-alike misreads, missed entries and exits, and late deliveries. And it does
    # load less (else this would test nothing).
    import citybrain.parking.store.common as ledger_module  # the SQL adapters' loading

    msgs = make_stream(600, seed=seed)
    items = _items(msgs, seed)
    loaded: list[int] = []
    real_load = ledger_module._load_state

    def counting(*args: Any) -> Any:
        state = real_load(*args)
        loaded.append(len(state.sessions))
        return state

    monkeypatch.setattr(ledger_module, "_load_state", counting)

    def run() -> tuple[Ledger, list[RecordOutcome]]:
        ledger = ledger_factory()
        _bind_some(ledger, msgs)
        rng = random.Random(seed)
        return ledger, _in_random_batches(ledger, items, rng, (1, 2, 5, 20, 64), expire=0.1)

    recent, recent_outcomes = run()
    recent_loaded = sum(loaded)
    loaded.clear()
    whole = ledger_module._keyed_sessions  # every stay of the key, whatever ``since`` says
    monkeypatch.setattr(ledger_module, "_recent_sessions", whole)
    full, full_outcomes = run()
    assert _plain(recent_outcomes) == _plain(full_outcomes)
    assert snapshot(recent) == snapshot(full)
    assert [c.session_id for c in recent.charges()] == [c.session_id for c in full.charges()]
    assert recent_loaded < sum(loaded)


def test_one_batch_with_duplicates_conflicts_and_dead_letters(ledger: Ledger) -> None:
    ledger.bind("浙A12345", "acct-1", at=at(-60))
    entry = read_msg("r1", "in", "浙A·12345", at(0))
    again = read_msg("r2", "in", "浙A12345", at(0, 3), camera="cam-in-2")  # double read
    leave = read_msg("r3", "out", "浙A12345", at(140))
    other = read_msg("r1", "in", "浙B99999", at(0))  # r1 reused for other content
    batch = [
        RecordItem("L01", entry, at(0, 1)),
        RecordItem("L01", entry, at(0, 2)),  # the same read twice in the batch
        RecordItem("L01", again, at(0, 4)),
        RecordItem("L01", b"garbage", at(0, 5), "citybrain/parking/L01/reads"),
        RecordItem("L01", other, at(0, 6)),
        RecordItem("L02", leave, at(140, 2)),  # topic of another lot
        RecordItem("L01", leave, at(140, 3)),
        RecordItem("L01", b"garbage", at(141), "citybrain/parking/L01/reads"),  # kept once
    ]
    outcomes = ledger.record_many(batch)
    assert [(o.kind, o.read_id, o.reason) for o in outcomes] == [
        (OutcomeKind.RECORDED, "r1", None),
        (OutcomeKind.DUPLICATE, "r1", None),
        (OutcomeKind.RECORDED, "r2", None),
        (OutcomeKind.DEAD_LETTER, None, DeadReason.MALFORMED_JSON),
        (OutcomeKind.DEAD_LETTER, "r1", DeadReason.READ_ID_CONFLICT),
        (OutcomeKind.DEAD_LETTER, "r3", DeadReason.LOT_MISMATCH),
        (OutcomeKind.RECORDED, "r3", None),
        (OutcomeKind.DEAD_LETTER, None, DeadReason.MALFORMED_JSON),
    ]
    (session,) = ledger.sessions()
    assert outcomes[0].sessions == (session.session_id,) == outcomes[6].sessions
    assert outcomes[2].sessions == ()  # joined the entry's passage: no session changed
    assert (session.status, session.fee_cents, session.account) == ("settled", 2500, "acct-1")
    (charge,) = ledger.charges()
    assert (charge.cents, charge.charged_at) == (2500, at(140, 3))  # the closing read's arrival
    dead = ledger.dead_letters()
    assert [d.reason for d in dead] == [
        DeadReason.MALFORMED_JSON,
        DeadReason.READ_ID_CONFLICT,
        DeadReason.LOT_MISMATCH,
    ]
    assert dead[0].received_at == at(0, 5) and dead[0].topic == "citybrain/parking/L01/reads"
    assert "recorded at" in dead[1].detail and dead[1].payload == other
    # The whole batch again, later: duplicates and the same dead letters, nothing new.
    before = snapshot(ledger)
    replay = ledger.record_many([i._replace(received_at=at(300)) for i in batch])
    assert [o.kind for o in replay] == [
        OutcomeKind.DUPLICATE,
        OutcomeKind.DUPLICATE,
        OutcomeKind.DUPLICATE,
        OutcomeKind.DEAD_LETTER,
        OutcomeKind.DEAD_LETTER,
        OutcomeKind.DEAD_LETTER,
        OutcomeKind.DUPLICATE,
        OutcomeKind.DEAD_LETTER,
    ]
    assert snapshot(ledger) == before
    assert ledger.record_many([]) == []


def test_a_failing_batch_stores_nothing(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger.bind("浙A12345", "acct-1", at=at(-60))
    ledger.record("L01", read_msg("r1", "in", "浙A12345", at(0)), at(0, 1))
    before = snapshot(ledger)
    batch = [
        RecordItem("L01", read_msg("r2", "in", "浙B22222", at(1)), at(1)),
        RecordItem("L01", b"garbage", at(1)),
        RecordItem("L01", read_msg("r3", "out", "浙A12345", at(90)), at(90)),
    ]
    import citybrain.parking.ledger as ledger_module

    real = ledger_module.Writes.flush

    def failing(self: Any) -> int:
        real(self)  # every write of the batch done (PostgreSQL: sent), then a failure
        raise RuntimeError("disk full")

    monkeypatch.setattr(ledger_module.Writes, "flush", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        ledger.record_many(batch)
    assert snapshot(ledger) == before
    monkeypatch.setattr(ledger_module.Writes, "flush", real)
    assert [o.kind for o in ledger.record_many(batch)] == [
        OutcomeKind.RECORDED,
        OutcomeKind.DEAD_LETTER,
        OutcomeKind.RECORDED,
    ]
    assert len(ledger.charges()) == 1


# ------------------------------------------------------------------------ the handler


class _Transport:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        self.calls.append(f"publish {topic} {json.loads(payload)['read_id']}")

    def ack(self, mid: int, qos: int) -> None:
        self.calls.append(f"puback {mid}")


class _BatchSink:
    """Records into a real ledger, or fails as a database that is down."""

    def __init__(self, ledger: Ledger, calls: list[str]) -> None:
        self.ledger = ledger
        self.calls = calls
        self.down = False

    def record(self, topic_lot: str, payload: bytes, received_at: datetime) -> RecordOutcome:
        raise AssertionError("a batch sink is called with batches")

    def record_many(self, items: Sequence[tuple[str, bytes, datetime]]) -> list[RecordOutcome]:
        if self.down:
            raise ConnectionError("database is down")
        outcomes = self.ledger.record_many(items)
        self.calls.append(f"commit {len(items)}")
        return outcomes


def _delivery(i: int, payload: bytes, lot: str = "L01") -> Delivery:
    return Delivery(f"citybrain/parking/{lot}/reads", payload, mid=100 + i, qos=1)


def test_a_failing_batch_acks_nothing_and_a_good_one_acks_after_its_commit(
    ledger: Ledger,
) -> None:
    calls: list[str] = []
    sink = _BatchSink(ledger, calls)
    handler = ReadHandler(sink, _Transport(calls), clock=lambda: at(0, 30))
    batch = [
        _delivery(1, read_msg("r1", "in", "浙A12345", at(0))),
        _delivery(2, b"garbage"),
        _delivery(3, read_msg("r1", "in", "浙A12345", at(0))),
        Delivery("elsewhere/topic", b"x", mid=104, qos=1),
        _delivery(5, read_msg("r2", "out", "浙A12345", at(30))),
    ]
    sink.down = True
    assert handler.handle_batch(batch) == 0
    assert calls == [] and handler.broken and handler.stats.sink_failures == 1
    assert ledger.sessions() == []
    sink.down = False
    assert handler.handle_batch(batch) == 0  # broken: nothing until the reconnection
    handler.reset()
    assert handler.handle_batch(batch) == len(batch)
    assert calls == [
        "commit 4",  # one transaction, then the answers in arrival order
        "publish citybrain/parking/L01/acks r1",
        "puback 101",
        "puback 102",  # a dead letter without a read id: the broker's ack only
        "publish citybrain/parking/L01/acks r1",
        "puback 103",
        "puback 104",  # a foreign topic: acked, never recorded
        "publish citybrain/parking/L01/acks r2",
        "puback 105",
    ]
    stats = handler.stats
    assert (stats.recorded, stats.duplicate, stats.dead_letter, stats.foreign_topic) == (2, 1, 1, 1)
    assert stats.batches == 1
    (session,) = ledger.sessions()
    assert session.status == "unpaid"


# ------------------------------------------------------------------------ real broker


def _payloads(n: int, seed: int) -> list[tuple[str, bytes]]:
    """``n`` reads of cars entering then leaving lots L01/L02, some read twice."""
    rng = random.Random(seed)
    out: list[tuple[str, bytes]] = []
    car = 0
    while len(out) < n:
        car += 1
        lot = rng.choice(("L01", "L02"))
        plate = f"浙A{car:05d}"
        t = at(car)
        for rid, direction, when in (
            (f"c{car}-in", "in", t),
            (f"c{car}-out", "out", t + timedelta(minutes=95)),
        ):
            out.append((lot, read_msg(rid, direction, plate, when, lot=lot)))
            if rng.random() < 0.2:
                out.append(
                    (
                        lot,
                        read_msg(
                            rid + "b",
                            direction,
                            plate,
                            when + timedelta(seconds=2),
                            lot=lot,
                            camera="cam-2",
                        ),
                    )
                )
    return out[:n]


def _ledger_counts(url: str) -> tuple[int, int, int, int]:
    """(reads, distinct reads, charges, sessions charged)."""
    from sqlalchemy import text

    ledger = open_ledger(url)
    try:
        with ledger.engine.connect() as conn:
            reads, distinct = conn.execute(
                text("SELECT count(*), count(DISTINCT read_id) FROM read")
            ).one()
            charges, charged = conn.execute(
                text("SELECT count(*), count(DISTINCT session_id) FROM charge")
            ).one()
        return int(reads), int(distinct), int(charges), int(charged)
    finally:
        ledger.close()


def _bind_all(url: str, payloads: Sequence[tuple[str, bytes]]) -> int:
    """Bind every plate; returns how many stays will be charged (both reads present)."""
    ledger = open_ledger(url)
    try:
        plates = sorted({json.loads(p)["plate"] for _, p in payloads})
        ledger.bind_many([(p, f"acct-{p}") for p in plates], at=at(-10))
    finally:
        ledger.close()
    ids = {json.loads(p)["read_id"] for _, p in payloads}
    return sum(1 for rid in ids if rid.endswith("-out") and rid.replace("-out", "-in") in ids)


def _serve_in_thread(
    url: str, sink: Any, client_id: str, root: str, **options: Any
) -> tuple[threading.Thread, threading.Event, threading.Event, list[Any]]:
    """``run_service`` on a thread: (the thread, its stop event, its ready event, a list
    that receives its stats when it returns)."""
    stop, ready = threading.Event(), threading.Event()
    result: list[Any] = []

    def serve() -> None:
        result.append(
            run_service(
                url,
                sink,
                client_id=client_id,
                topic_root=root,
                stop=stop,
                on_ready=ready.set,
                **options,
            )
        )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread, stop, ready, result


def test_service_records_batches_into_the_ledger_once(
    mqtt_url: str, sessions: Sessions, root: str, fresh_url: Callable[[], str]
) -> None:
    url = fresh_url()
    payloads = _payloads(120, seed=4)
    stays = _bind_all(url, payloads)
    ledger = open_ledger(url)
    service_id = sessions.new("svc")
    listener = AckListener(mqtt_url, acks_topic("L01", root))
    pub = Publisher(mqtt_url)
    thread, stop, ready, result = _serve_in_thread(
        mqtt_url, ledger, service_id, root, batch_size=16, batch_window=0.01
    )
    try:
        assert ready.wait(10)
        infos = [pub.client.publish(reads_topic(lot, root), p, qos=1) for lot, p in payloads]
        infos += [pub.client.publish(reads_topic(lot, root), p, qos=1) for lot, p in payloads[:10]]
        for info in infos:
            info.wait_for_publish(timeout=10)
        wait_until(lambda: _ledger_counts(url)[0] == len(payloads), 20, "every read")
        l01 = {json.loads(p)["read_id"] for lot, p in payloads if lot == "L01"}
        wait_until(lambda: l01 <= set(listener.acks), 10, "the acks of L01")
    finally:
        stop.set()
        thread.join(10)
        pub.close()
        listener.close()
        ledger.close()
    stats = result[0]
    assert stats.recorded == len(payloads) and stats.duplicate >= 10 and stats.dead_letter == 0
    assert 1 <= stats.batches <= stats.handled
    assert _ledger_counts(url) == (len(payloads), len(payloads), stays, stays)


def test_a_killed_ledger_process_is_replaced_and_nothing_is_lost_or_charged_twice(
    mqtt_url: str, sessions: Sessions, root: str, tmp_path: Path
) -> None:
    """On PostgreSQL the service records in ledger processes of its own; kill -9 one of
    them while reads stream in: a new process takes its lane over (a batch it was
    recording is not acked and comes back from the broker), and every read is stored and
    every stay charged once."""
    import multiprocessing

    from citybrain.parking.scratch import fresh_database

    _led.require_pg()
    with fresh_database("postgresql", tmp_path, _led.PG_URL, "cbtest") as url:
        payloads = _payloads(400, seed=7)
        stays = _bind_all(url, payloads)
        ledger = open_ledger(url)
        assert ledger.parallel_writers
        pub = Publisher(mqtt_url)
        before = set(multiprocessing.active_children())
        thread, stop, ready, result = _serve_in_thread(
            mqtt_url,
            ledger,
            sessions.new("svc"),
            root,
            batch_size=400,
            batch_window=0.3,  # batches large enough to be split over both lanes
            max_backoff=0.5,
        )
        try:
            assert ready.wait(30)
            lanes = [p for p in multiprocessing.active_children() if p not in before]
            assert len(lanes) == 2 and all(p.name == "parking-lane" for p in lanes)
            half = len(payloads) // 2
            for lot, p in payloads[:half]:
                pub.client.publish(reads_topic(lot, root), p, qos=1)
            wait_until(lambda: _ledger_counts(url)[0] > 0, 20, "the first reads")
            assert lanes[0].pid is not None
            os.kill(lanes[0].pid, signal.SIGKILL)
            infos = [
                pub.client.publish(reads_topic(lot, root), p, qos=1) for lot, p in payloads[half:]
            ]
            for info in infos:
                info.wait_for_publish(timeout=10)
            wait_until(lambda: _ledger_counts(url)[0] == len(payloads), 60, "every read")
            now = {p.pid for p in multiprocessing.active_children() if p.name == "parking-lane"}
            assert lanes[0].pid not in now and lanes[1].pid in now and len(now) == 2
        finally:
            stop.set()
            thread.join(20)
            pub.close()
            ledger.close()
        assert not thread.is_alive()
        stats = result[0]
        # Killed between batches: nothing failed. Killed mid-batch: that batch failed, its
        # other part had committed, and those reads came back as duplicates.
        assert stats.recorded + stats.duplicate >= len(payloads)
        assert stats.duplicate == 0 or stats.sink_failures >= 1
        assert _ledger_counts(url) == (len(payloads), len(payloads), stays, stays)


class _GatedSink:
    """A ledger whose first ``record_many`` (with ``lot``: every one that holds reads of
    that lot, until released) waits for ``release`` before it starts (a slow
    transaction); notes each committed batch and, with a ``listener``, which acks had
    reached the gateways right after the first commit. Lanes may call it from several
    threads: one transaction at a time on the shared ledger object."""

    def __init__(
        self, ledger: Ledger, listener: AckListener | None = None, lot: str | None = None
    ) -> None:
        self.ledger, self.listener, self.lot = ledger, listener, lot
        self.started, self.release = threading.Event(), threading.Event()
        self.batches: list[list[str]] = []  # read ids of each committed batch, in order
        self.acks_at_first_commit: list[str] | None = None
        self.lock = threading.Lock()

    def record(self, topic_lot: str, payload: bytes, received_at: datetime) -> Any:
        return self.ledger.record(topic_lot, payload, received_at)

    def record_many(self, items: Sequence[tuple[str, bytes, datetime]]) -> Any:
        first = not self.batches
        if self.lot is None:
            gated = first
        else:
            gated = not self.release.is_set() and any(lot == self.lot for lot, _, _ in items)
        if gated:
            self.started.set()
            assert self.release.wait(20)
        with self.lock:
            out = self.ledger.record_many(items)
            if first and self.listener is not None:
                self.acks_at_first_commit = list(self.listener.acks)
            self.batches.append([json.loads(p)["read_id"] for _, p, _ in items])
        return out


def _finish(sink: _GatedSink, stop: threading.Event, thread: threading.Thread, *used: Any) -> None:
    """Release the sink, stop the service thread, close what the test opened."""
    sink.release.set()
    stop.set()
    thread.join(10)
    for thing in used:
        thing.close()


def test_service_receives_while_a_batch_is_recorded_and_acks_only_after_its_commit(
    mqtt_url: str, sessions: Sessions, root: str, fresh_url: Callable[[], str]
) -> None:
    ledger = open_ledger(fresh_url())
    listener = AckListener(mqtt_url, acks_topic("L01", root))
    sink = _GatedSink(ledger, listener)
    pub = Publisher(mqtt_url)
    first = [read_msg(f"a{i}", "in", f"浙A1000{i}", at(i), lot="L01") for i in range(3)]
    later = [read_msg(f"b{i}", "in", f"浙A2000{i}", at(10 + i), lot="L01") for i in range(3)]

    thread, stop, ready, result = _serve_in_thread(
        mqtt_url, sink, sessions.new("svc"), root, batch_size=3, batch_window=0.01
    )
    try:
        assert ready.wait(10)
        for body in first:
            pub.client.publish(reads_topic("L01", root), body, qos=1).wait_for_publish(10)
        assert sink.started.wait(10)  # the first batch is in its transaction
        for body in later:  # ... and these arrive meanwhile
            pub.client.publish(reads_topic("L01", root), body, qos=1).wait_for_publish(10)
        sink.release.set()
        wanted = {f"a{i}" for i in range(3)} | {f"b{i}" for i in range(3)}
        wait_until(lambda: wanted <= set(listener.acks), 20, "every ack")
    finally:
        _finish(sink, stop, thread, pub, listener, ledger)
    assert sink.acks_at_first_commit == []  # nothing acked before the commit
    assert sink.batches[0] and set(sink.batches[0]) <= {"a0", "a1", "a2"}
    recorded = sorted(rid for batch in sink.batches for rid in batch)
    assert recorded == ["a0", "a1", "a2", "b0", "b1", "b2"]  # each once, in later batches
    stats = result[0]
    assert (stats.recorded, stats.duplicate, stats.sink_failures) == (6, 0, 0)


@pytest.mark.parametrize("seed", range(5))
def test_acks_are_released_in_arrival_order_whatever_order_the_lanes_commit_in(
    seed: int,
) -> None:
    rng = random.Random(seed)
    order = _InOrder()
    deliveries = [Delivery("t", b"", mid, 1, None, order.next_seq()) for mid in range(40)]
    parts: list[list[Delivery]] = []
    rest = list(deliveries)
    while rest:  # transactions of a few messages each, not all contiguous
        part = sorted(rng.sample(rest, min(len(rest), rng.randint(1, 6))), key=lambda d: d.seq)
        parts.append(part)
        rest = [d for d in rest if d not in part]
    rng.shuffle(parts)  # the order the lanes commit in
    answered: list[int] = []
    committed: set[int] = set()
    for part in parts:
        released = order.committed(Recorded(tuple(part), (None,) * len(part)))
        committed |= {d.seq for d in part}
        answered += [d.mid for d in released.deliveries]
        # Exactly the committed prefix of the arrival order has been answered.
        prefix = next((k for k in range(len(deliveries)) if k not in committed), 40)
        assert answered == list(range(prefix))


def test_lanes_do_not_wait_for_each_other_and_acks_keep_the_arrival_order(
    mqtt_url: str, sessions: Sessions, root: str, fresh_url: Callable[[], str]
) -> None:
    # Lot L01's transaction is held up: lot L02's messages, which arrive after, are
    # recorded and committed by the other lane meanwhile, but acknowledged only after
    # L01's (PUBACKs in the order of arrival). L01's later messages wait for its lane.
    ledger = open_ledger(fresh_url())
    listener = AckListener(mqtt_url, f"{root}/+/acks")
    sink = _GatedSink(ledger, lot="L01")
    pub = Publisher(mqtt_url)

    def send(lot: str, tag: str, base: int) -> list[str]:
        ids = [f"{tag}{i}" for i in range(4)]
        for i, rid in enumerate(ids):
            body = read_msg(rid, "in", f"浙A{base + i:05d}", at(base + i), lot=lot)
            pub.client.publish(reads_topic(lot, root), body, qos=1).wait_for_publish(10)
        return ids

    thread, stop, ready, result = _serve_in_thread(
        mqtt_url, sink, sessions.new("svc"), root, batch_size=4, batch_window=0.01, lanes=2
    )
    try:
        assert ready.wait(10)
        first = send("L01", "a", 100)
        assert sink.started.wait(10)  # a lane holds L01's first messages
        other = send("L02", "b", 200)
        later = send("L01", "c", 300)
        wait_until(lambda: set(other) <= {r for b in sink.batches for r in b}, 20, "L02")
        time.sleep(0.3)  # a wrong service would ack L02 or record L01's later ones now
        assert listener.acks == []  # L02 committed, but acked only after L01
        assert {r for b in sink.batches for r in b} == set(other)  # L01 waits for its lane
        sink.release.set()
        wait_until(lambda: len(listener.acks) == 12, 20, "every ack")
    finally:
        _finish(sink, stop, thread, pub, listener, ledger)
    assert listener.acks[:4] == first and set(listener.acks[4:8]) == set(other)
    assert set(listener.acks[8:]) == set(later)
    committed = [r for b in sink.batches for r in b]
    assert committed.index("a0") < committed.index("c0")  # L01 in arrival order
    stats = result[0]
    assert (stats.recorded, stats.duplicate, stats.sink_failures) == (12, 0, 0)


# ------------------------------------------------------------------------ kill -9


def batch_service_main() -> None:
    """Subprocess entry: a batching service over a SQLite ledger that dies (os._exit) on
    its Nth batch, inside the transaction ("before_commit"), right after the commit
    ("after_commit"), or at the Nth broker PUBACK ("before_broker_ack")."""
    crash, crash_at = os.environ["CB_CRASH"], int(os.environ["CB_CRASH_AT"])
    calls = [0]
    if crash == "before_broker_ack":
        original_ack = Link.ack

        def ack(self: Link, mid: int, qos: int = 1) -> Any:
            calls[0] += 1
            if calls[0] == crash_at:
                os._exit(CRASH_CODE)
            return original_ack(self, mid, qos)

        Link.ack = ack  # type: ignore[method-assign]
    elif crash == "before_commit":
        import citybrain.parking.ledger as ledger_module

        original_apply = Ledger._apply_reads

        def apply(self: Ledger, *a: Any, **kw: Any) -> Any:
            out = original_apply(self, *a, **kw)
            calls[0] += 1
            if calls[0] == crash_at:
                os._exit(CRASH_CODE)  # every write done, the commit not
            return out

        ledger_module.Ledger._apply_reads = apply  # type: ignore[method-assign]
    elif crash == "after_commit":
        original_many = Ledger.record_many

        def many(self: Ledger, *a: Any, **kw: Any) -> Any:
            out = original_many(self, *a, **kw)
            calls[0] += 1
            if calls[0] == crash_at:
                os._exit(CRASH_CODE)
            return out

        Ledger.record_many = many  # type: ignore[method-assign]
    ledger = open_ledger(os.environ["CB_DB"])
    run_service(
        os.environ["CB_URL"],
        ledger,
        client_id=os.environ["CB_CLIENT"],
        topic_root=os.environ["CB_ROOT"],
        on_ready=lambda: print("READY", flush=True),
        batch_size=int(os.environ.get("CB_BATCH", "8")),
        batch_window=0.005,
    )


def _batch_service(
    url: str, db: str, client_id: str, root: str, crash: str = "", crash_at: int = 0
) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        CB_URL=url,
        CB_DB=db,
        CB_CLIENT=client_id,
        CB_ROOT=root,
        CB_CRASH=crash,
        CB_CRASH_AT=str(crash_at),
    )
    code = "from tests.test_parking_batch import batch_service_main; batch_service_main()"
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE)


def _wait_ready(proc: subprocess.Popen[bytes]) -> None:
    _mq.wait_ready(proc, timeout=30)


@pytest.mark.parametrize("crash", ["before_commit", "after_commit", "before_broker_ack"])
def test_kill9_batching_service_at_each_step_loses_nothing_and_charges_once(
    crash: str, mqtt_url: str, sessions: Sessions, root: str, tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    payloads = _payloads(60, seed=7)
    stays = _bind_all(db, payloads)
    service_id = sessions.new("svc")
    proc = _batch_service(mqtt_url, db, service_id, root, crash, crash_at=3)
    try:
        _wait_ready(proc)
        pub = Publisher(mqtt_url)
        try:
            for lot, p in payloads:
                pub.publish(reads_topic(lot, root), p)  # each exactly once
        finally:
            pub.close()
        assert proc.wait(timeout=30) == CRASH_CODE
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert _ledger_counts(db)[0] < len(payloads)  # it died mid-stream
    proc = _batch_service(mqtt_url, db, service_id, root)
    try:
        _wait_ready(proc)
        wait_until(lambda: _ledger_counts(db)[0] == len(payloads), 30, "every read")
    finally:
        proc.kill()
        proc.wait()
    assert _ledger_counts(db) == (len(payloads), len(payloads), stays, stays)


def test_kill9_batching_service_at_random_moments(
    mqtt_url: str, sessions: Sessions, root: str, fresh_url: Callable[[], str]
) -> None:
    """On PostgreSQL the service's ledger processes outlive a kill -9 of the service for
    as long as the batch in hand takes: a commit then is redelivered and found duplicate."""
    db = fresh_url()
    seed = int(os.environ.get("CB_KILL_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    payloads = _payloads(400, seed=seed)
    stays = _bind_all(db, payloads)
    service_id = sessions.new("svc")
    proc = _batch_service(mqtt_url, db, service_id, root)
    _wait_ready(proc)

    def publish_all() -> None:
        pub = Publisher(mqtt_url)
        try:
            for lot, p in payloads:
                pub.publish(reads_topic(lot, root), p)
                time.sleep(0.003)
        finally:
            pub.close()

    publisher = threading.Thread(target=publish_all)
    publisher.start()
    try:
        for _ in range(3):
            time.sleep(rng.uniform(0.05, 0.4))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc = _batch_service(mqtt_url, db, service_id, root)
            _wait_ready(proc)
        publisher.join(60)
        wait_until(lambda: _ledger_counts(db)[0] == len(payloads), 30, f"seed {seed}: all reads")
    finally:
        proc.kill()
        proc.wait()
        publisher.join(60)
    assert _ledger_counts(db) == (len(payloads), len(payloads), stays, stays), f"seed {seed}"


class _DyingSink:
    """A sink for a ledger process: its process dies on a batch from lot "die"."""

    def record(self, topic_lot: str, payload: bytes, received_at: datetime) -> Any:
        raise NotImplementedError

    def record_many(self, items: Sequence[tuple[str, bytes, datetime]]) -> Any:
        if items and items[0][0] == "die":
            os._exit(CRASH_CODE)
        return [Outcome(payload.decode(), "recorded") for _, payload, _ in items]


def test_a_batch_fails_when_its_ledger_process_dies_and_the_next_goes_to_a_new_one() -> None:
    from citybrain.parking.service import _RemoteSink

    remote = _RemoteSink(_DyingSink)
    now = at(0)
    try:
        first = remote.record_many([("L01", b"a", now), ("L01", b"b", now)])
        assert [(o.read_id, o.kind) for o in first] == [("a", "recorded"), ("b", "recorded")]
        with pytest.raises(RuntimeError, match="died"):
            remote.record_many([("die", b"c", now)])
        again = remote.record_many([("L01", b"d", now)])
        assert [(o.read_id, o.kind) for o in again] == [("d", "recorded")]
    finally:
        remote.close()


def _unopenable() -> Any:
    raise ValueError("no database here")


def test_a_ledger_process_that_cannot_open_its_ledger_fails_at_start() -> None:
    """A ledger process reports ready only once its ledger is open, so the service says
    it is ready (and takes reads) only then, and a ledger it cannot open fails at start."""
    from citybrain.parking.service import _RemoteSink

    with pytest.raises(RuntimeError, match="no database here"):
        _RemoteSink(_unopenable)
