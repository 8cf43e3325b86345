"""Parking MQTT: the pure protocol, and the service against a real broker, kill -9 included.

The broker (``tests/brokers.py``): ``CITYBRAIN_TEST_MQTT_URL`` or ``mqtt://127.0.0.1:1883``
when reachable; else, with CI=true, the tests fail; else a private Mosquitto is started
(``mosquitto`` binary), and without one the embedded amqtt broker. Every test uses its own
topic root and client ids, and forgets its persistent sessions afterwards, so runs sharing
a broker do not interfere.

The kill -9 tests run the service in a subprocess with a SQLite sink that can ``os._exit``
at a chosen point (before its commit, after it, or just before the broker PUBACK), publish
each read exactly once with a plain publisher (no gateway, so any redelivery is the
broker's), restart the service and check every read is recorded, and charged, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import selectors
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.client import Client, MQTTMessage

from citybrain.mqtt.address import BrokerSettings, parse_broker_url
from citybrain.mqtt.brokers import reachable
from citybrain.mqtt.link import Link
from citybrain.mqtt.paho import forget_session, make_client
from citybrain.parking.mqtt import (
    SendWindow,
    acks_topic,
    all_reads_filter,
    check_lot_id,
    encode_read,
    lot_of_topic,
    mask_plate,
    parse_ack,
    plan_ack,
    reads_topic,
)
from citybrain.parking.readcontract import PayloadError, parse_read, parse_rfc3339, read_id_of
from citybrain.parking.service import Outcome, ReadHandler, run_service

from .brokers import own_broker, shared_broker

ROOT = Path(__file__).resolve().parent.parent
CRASH_CODE = 77
CST = timezone(timedelta(hours=8))


# ------------------------------------------------------------------------ test sink


class SqliteSink:
    """A ``ReadSink`` for tests: reads(read_id PRIMARY KEY, payload), committed per call.

    Per transaction it also writes ``charges`` (one row per newly recorded read: a read
    charged twice would show two) and ``deliveries`` (every call, so redeliveries show).
    ``crash`` makes the process ``os._exit`` on call number ``crash_at``: "before_commit"
    (inside the open transaction) or "after_commit" (before returning to the service).
    Calls numbered in ``fail_on`` raise, as a database that is down would."""

    def __init__(
        self,
        path: Path,
        *,
        crash: str | None = None,
        crash_at: int = 0,
        delay: float = 0.0,
        fail_on: frozenset[int] = frozenset(),
    ) -> None:
        self.path = path
        self.fail_on = fail_on
        self.crash = crash
        self.crash_at = crash_at
        self.delay = delay
        self.calls = 0
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS reads (read_id TEXT PRIMARY KEY, lot TEXT, payload BLOB);
            CREATE TABLE IF NOT EXISTS charges (id INTEGER PRIMARY KEY, read_id TEXT);
            CREATE TABLE IF NOT EXISTS deliveries
                (id INTEGER PRIMARY KEY, read_id TEXT, kind TEXT, pid INTEGER);
            CREATE TABLE IF NOT EXISTS dead_letters
                (payload BLOB, lot TEXT, reason TEXT, PRIMARY KEY (lot, payload));
            """
        )

    def record(self, topic_lot: str, payload: bytes, received_at: datetime) -> Outcome:
        self.calls += 1
        if self.calls in self.fail_on:
            raise sqlite3.OperationalError("database is locked (simulated outage)")
        if self.delay:
            time.sleep(self.delay)
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            read = parse_read(payload, topic_lot)
        except PayloadError as exc:
            read_id = read_id_of(payload)
            db.execute(
                "INSERT OR IGNORE INTO dead_letters VALUES (?, ?, ?)",
                (payload, topic_lot, str(exc)),
            )
            outcome = Outcome(read_id, "dead_letter")
        else:
            cur = db.execute(
                "INSERT OR IGNORE INTO reads VALUES (?, ?, ?)", (read.read_id, topic_lot, payload)
            )
            if cur.rowcount == 1:
                db.execute("INSERT INTO charges (read_id) VALUES (?)", (read.read_id,))
                outcome = Outcome(read.read_id, "recorded")
            else:
                outcome = Outcome(read.read_id, "duplicate")
        db.execute(
            "INSERT INTO deliveries (read_id, kind, pid) VALUES (?, ?, ?)",
            (outcome.read_id, outcome.kind, os.getpid()),
        )
        if self.crash == "before_commit" and self.calls == self.crash_at:
            os._exit(CRASH_CODE)
        db.execute("COMMIT")
        if self.crash == "after_commit" and self.calls == self.crash_at:
            os._exit(CRASH_CODE)
        return outcome


def db_rows(path: Path, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute(sql, args).fetchall()


def db_count(path: Path, sql: str) -> int:
    if not path.exists():
        return 0
    try:
        return int(db_rows(path, sql)[0][0])
    except sqlite3.OperationalError:  # tables not created yet
        return 0


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


# ------------------------------------------------------------------------ brokers


@pytest.fixture(scope="session")
def mqtt_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with shared_broker(tmp_path_factory.mktemp("mosquitto")) as url:
        yield url


@dataclass
class Sessions:
    """Client ids whose persistent sessions are forgotten when the test ends."""

    url: str
    ids: list[str] = field(default_factory=list)

    def new(self, prefix: str) -> str:
        client_id = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.ids.append(client_id)
        return client_id


@pytest.fixture
def sessions(mqtt_url: str) -> Iterator[Sessions]:
    s = Sessions(mqtt_url)
    yield s
    settings = BrokerSettings.from_url(mqtt_url)
    for client_id in s.ids:
        with contextlib.suppress(OSError):
            forget_session(settings, client_id)


@pytest.fixture
def root() -> str:
    return f"cbtest/{uuid.uuid4().hex[:10]}/parking"


# ------------------------------------------------------------------------ helpers


def read_obj(i: int, lot: str = "lot-1", **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "read_id": f"r{i:05d}",
        "lot_id": lot,
        "camera_id": "cam-1",
        "direction": "in" if i % 2 else "out",
        "plate": f"浙A·{10000 + i}",
        "confidence": 0.9,
        "ts": (datetime(2026, 11, 22, 8, 0, tzinfo=CST) + timedelta(seconds=i)).isoformat(),
    }
    obj.update(extra)
    return obj


def payload(i: int, lot: str = "lot-1", **extra: Any) -> bytes:
    return json.dumps(read_obj(i, lot, **extra), ensure_ascii=False).encode()


class Publisher:
    """A plain QoS 1 publisher (clean session), as a gateway without an outbox."""

    def __init__(self, url: str, client_id: str | None = None, **creds: Any) -> None:
        settings = BrokerSettings.from_url(url, **creds)
        self.client = make_client(
            settings, client_id or f"pub-{uuid.uuid4().hex[:8]}", clean_session=True
        )
        self.client.connect(settings.address.host, settings.address.port)
        self.client.loop_start()

    def publish(self, topic: str, data: bytes) -> None:
        self.client.publish(topic, data, qos=1).wait_for_publish(timeout=5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class AckListener:
    """Collects the read ids acknowledged on one lot's acks topic."""

    def __init__(self, url: str, topic: str, **creds: Any) -> None:
        settings = BrokerSettings.from_url(url, **creds)
        self.acks: list[str] = []
        self.subscribed = threading.Event()
        self.client = make_client(settings, f"acks-{uuid.uuid4().hex[:8]}", clean_session=True)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(settings.address.host, settings.address.port)
        self.client.loop_start()
        assert self.subscribed.wait(5)

    def _on_message(self, _c: Client, _u: Any, message: MQTTMessage) -> None:
        self.acks.append(parse_ack(bytes(message.payload)))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class ServiceThread:
    """``run_service`` in a thread of this process."""

    def __init__(self, url: str, sink: SqliteSink, client_id: str, root: str, **kw: Any) -> None:
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.error: list[BaseException] = []
        self.stats: Any = None

        def target() -> None:
            try:
                self.stats = run_service(
                    url,
                    sink,
                    client_id=client_id,
                    topic_root=root,
                    stop=self.stop,
                    on_ready=self.ready.set,
                    **kw,
                )
            except BaseException as exc:
                self.error.append(exc)
                self.ready.set()

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def wait_ready(self, timeout: float = 10.0) -> None:
        assert self.ready.wait(timeout), "service did not subscribe"
        assert not self.error, self.error

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()


@contextlib.contextmanager
def service_thread(
    url: str, sink: SqliteSink, client_id: str, root: str, **kw: Any
) -> Iterator[ServiceThread]:
    svc = ServiceThread(url, sink, client_id, root, **kw)
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.close()


def service_subprocess(
    url: str, db: Path, client_id: str, root: str, crash: str = "", crash_at: int = 0
) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        CB_URL=url,
        CB_DB=str(db),
        CB_CLIENT=client_id,
        CB_ROOT=root,
        CB_CRASH=crash,
        CB_CRASH_AT=str(crash_at),
    )
    code = "from tests.test_parking_mqtt import service_main; service_main()"
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE)


def wait_ready(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Wait for the subprocess's READY line (printed once it is subscribed)."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sel.select(timeout=0.1):
                line = proc.stdout.readline()
                if line.strip() == b"READY":
                    return
                if not line:
                    pytest.fail(f"service subprocess exited with {proc.wait()}")
    proc.kill()
    pytest.fail("service subprocess did not become ready")


def service_main() -> None:
    """Subprocess entry: the service with a crashing sink (see ``SqliteSink``), or with a
    crash just before the Nth broker PUBACK ("before_broker_ack")."""
    crash, crash_at = os.environ["CB_CRASH"], int(os.environ["CB_CRASH_AT"])
    if crash == "before_broker_ack":
        acks = [0]
        original = Link.ack

        def ack(self: Link, mid: int, qos: int = 1) -> Any:
            acks[0] += 1
            if acks[0] == crash_at:
                os._exit(CRASH_CODE)
            return original(self, mid, qos)

        Link.ack = ack  # type: ignore[method-assign]
    sink = SqliteSink(Path(os.environ["CB_DB"]), crash=crash or None, crash_at=crash_at)
    run_service(
        os.environ["CB_URL"],
        sink,
        client_id=os.environ["CB_CLIENT"],
        topic_root=os.environ["CB_ROOT"],
        on_ready=lambda: print("READY", flush=True),
    )


# ------------------------------------------------------------------------ pure protocol


def test_topics() -> None:
    assert reads_topic("lot-1") == "citybrain/parking/lot-1/reads"
    assert acks_topic("lot-1", "x/y") == "x/y/lot-1/acks"
    assert all_reads_filter() == "citybrain/parking/+/reads"
    assert lot_of_topic("citybrain/parking/lot-1/reads", "reads") == "lot-1"
    assert lot_of_topic("citybrain/parking/lot-1/acks", "reads") is None
    assert lot_of_topic("citybrain/parking/a/b/reads", "reads") is None
    assert lot_of_topic("other/lot-1/reads", "reads") is None
    for bad in ("", "a/b", "+", "#", "-x", "a b", "x" * 65):
        with pytest.raises(ValueError):
            check_lot_id(bad)
    with pytest.raises(ValueError):
        reads_topic("lot", "citybrain/+")


def test_parse_read_and_roundtrip() -> None:
    read = parse_read(payload(3), "lot-1")
    assert (read.read_id, read.lot_id, read.direction.value) == ("r00003", "lot-1", "in")
    assert read.plate == "浙A10003" and read.raw_plate == "浙A·10003"
    assert read.ts.utcoffset() == timedelta(hours=8)
    assert parse_read(encode_read(read), "lot-1") == read
    assert parse_rfc3339("2026-11-22T00:00:00Z") == datetime(2026, 11, 22, tzinfo=UTC)
    assert parse_rfc3339("2026-11-22 08:00:00.123456789+08:00").microsecond == 123456
    assert read_id_of(b'{"read_id": "r9", "plate": 5}') == "r9"
    assert read_id_of(b"nonsense") is None


@pytest.mark.parametrize(
    "bad",
    [
        b"\xff\xfe",
        b"not json",
        b"[1, 2]",
        json.dumps({**read_obj(1), "read_id": ""}).encode(),
        json.dumps({**read_obj(1), "lot_id": "lot-2"}).encode(),  # not the topic's lot
        json.dumps({**read_obj(1), "direction": "sideways"}).encode(),
        json.dumps({**read_obj(1), "confidence": 1.5}).encode(),
        json.dumps({**read_obj(1), "confidence": True}).encode(),
        json.dumps({**read_obj(1), "confidence": "0.9"}).encode(),
        json.dumps({**read_obj(1), "ts": "2026-11-22T08:00:00"}).encode(),  # no offset
        json.dumps({**read_obj(1), "ts": "2026-13-22T08:00:00Z"}).encode(),
        json.dumps({**read_obj(1), "ts": 1700000000}).encode(),
        json.dumps({**read_obj(1), "plate": "·-"}).encode(),
        json.dumps({k: v for k, v in read_obj(1).items() if k != "camera_id"}).encode(),
    ],
)
def test_parse_read_rejects(bad: bytes) -> None:
    with pytest.raises(PayloadError) as info:
        parse_read(bad, "lot-1")
    assert "10001" not in str(info.value)  # the plate never appears in the error


def test_mask_plate() -> None:
    assert mask_plate("浙A·12345") == "浙A·1****"
    assert mask_plate("浙a 12345") == "浙A·1****"
    assert mask_plate("粤B·D12345") == "粤B·D*****"
    assert mask_plate("AB1234") == "AB·1***"
    assert mask_plate("AB1") == "***"
    assert mask_plate("··") == "<no plate>"


def test_parse_broker_url(tmp_path: Path) -> None:
    a = parse_broker_url("mqtt://broker.example:1884")
    assert (a.host, a.port, a.tls, a.username) == ("broker.example", 1884, False, None)
    b = parse_broker_url("mqtts://gw-lot-1:s%40cret@10.0.0.1")
    assert (b.port, b.tls, b.username, b.password) == (8883, True, "gw-lot-1", "s@cret")
    assert "s@cret" not in repr(b) and b.url == "mqtts://10.0.0.1:8883"
    assert parse_broker_url("mqtt://[::1]").url == "mqtt://[::1]:1883"
    for bad in ("http://x", "mqtt://", "mqtt://x:99999", "mqtt://x/path"):
        with pytest.raises(ValueError):
            parse_broker_url(bad)
    ca = tmp_path / "ca.crt"
    ca.write_text("not checked here\n")
    s = BrokerSettings.from_url("mqtt://u:p@h:1", username="gw", password="pw", ca_file=ca)
    assert (s.address.username, s.address.password, s.address.tls) == ("gw", "pw", True)
    with pytest.raises(ValueError, match="no CA certificate file"):
        BrokerSettings.from_url("mqtts://h", ca_file=tmp_path / "missing.crt")


def test_plan_ack() -> None:
    for kind in ("recorded", "duplicate", "dead_letter"):
        plan = plan_ack(kind, "r1", "lot-1")
        assert plan.topic == "citybrain/parking/lot-1/acks"
        assert plan.payload is not None and parse_ack(plan.payload) == "r1"
    assert plan_ack("dead_letter", None, "lot-1").topic is None
    with pytest.raises(ValueError):
        plan_ack("recorded", None, "lot-1")
    with pytest.raises(ValueError):
        plan_ack("maybe", "r1", "lot-1")


def test_send_window() -> None:
    w = SendWindow(size=3, resend_after=10)
    head = ["a", "b", "c", "d"]
    assert w.due(head, now=0) == (["a", "b", "c"], [])
    assert w.due(head, now=5) == ([], [])  # in flight, not yet due again
    w.acked(["a"])
    assert w.due(["b", "c", "d"], now=6) == (["d"], [])
    assert w.due(["b", "c", "d"], now=10) == ([], ["b", "c"])
    assert w.in_flight == 3
    w.reset()  # a new connection: everything pending goes again
    assert w.due(["b", "c", "d"], now=11) == (["b", "c", "d"], [])
    assert w.due(["d"], now=12) == ([], [])  # b, c retired elsewhere
    assert w.in_flight == 1


class _FakeTransport:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        self.calls.append(f"publish {topic} {parse_ack(payload)} q{qos}")

    def ack(self, mid: int, qos: int) -> None:
        self.calls.append(f"puback {mid}")


class _ListSink:
    def __init__(self, calls: list[str], fail_on: set[int]) -> None:
        self.calls = calls
        self.fail_on = fail_on
        self.n = 0

    def record(self, topic_lot: str, payload: bytes, received_at: datetime) -> Outcome:
        self.n += 1
        if self.n in self.fail_on:
            raise RuntimeError("database is down")
        read_id = read_id_of(payload)
        self.calls.append(f"commit {read_id}")
        return Outcome(read_id, "recorded" if read_id else "dead_letter")


def test_handler_acks_only_after_commit_and_stops_after_a_failure() -> None:
    calls: list[str] = []
    handler = ReadHandler(_ListSink(calls, fail_on={3}), _FakeTransport(calls))
    topic = "citybrain/parking/lot-1/reads"
    assert handler.handle(topic, payload(1), mid=11, qos=1)
    assert handler.handle(topic, b"garbage", mid=12, qos=1)
    assert not handler.handle(topic, payload(3), mid=13, qos=1)  # sink raises
    assert not handler.handle(topic, payload(4), mid=14, qos=1)  # broken: nothing acked
    assert calls == [
        "commit r00001",
        "publish citybrain/parking/lot-1/acks r00001 q1",
        "puback 11",
        "commit None",
        "puback 12",  # a dead letter without read id: the broker's ack only
    ]
    handler.reset()
    assert handler.handle(topic, payload(4), mid=15, qos=1)
    assert handler.stats.sink_failures == 1 and handler.stats.recorded == 2


# ------------------------------------------------------------------------ real broker


def test_service_records_acks_duplicates_and_dead_letters(
    mqtt_url: str, sessions: Sessions, root: str, tmp_path: Path
) -> None:
    db = tmp_path / "sink.db"
    sink = SqliteSink(db)
    service_id = sessions.new("svc")
    listener = AckListener(mqtt_url, acks_topic("lot-1", root))
    pub = Publisher(mqtt_url)
    bad = [b"not json", json.dumps({**read_obj(99), "confidence": 7}).encode()]
    try:
        with service_thread(mqtt_url, sink, service_id, root):
            for i in range(20):
                pub.publish(reads_topic("lot-1", root), payload(i))
            pub.publish(reads_topic("lot-1", root), payload(5))  # a gateway resending
            for data in bad:
                pub.publish(reads_topic("lot-1", root), data)
            wait_until(lambda: len(listener.acks) == 22, 10, "22 acks")
            wait_until(lambda: db_count(db, "SELECT count(*) FROM deliveries") == 23, 5, "23")
        # Restart: nothing is redelivered, so every message was acked to the broker.
        with service_thread(mqtt_url, sink, service_id, root):
            pub.publish(reads_topic("lot-1", root), payload(20))
            wait_until(lambda: len(listener.acks) == 23, 10, "the 23rd ack")
    finally:
        pub.close()
        listener.close()
    kinds = db_rows(db, "SELECT kind, count(*) FROM deliveries GROUP BY kind ORDER BY kind")
    assert kinds == [("dead_letter", 2), ("duplicate", 1), ("recorded", 21)]
    assert db_count(db, "SELECT count(*) FROM charges") == 21
    assert db_count(db, "SELECT count(*) FROM dead_letters") == 2
    # recorded, the duplicate and the dead letter with a read id are acked to the lot
    assert sorted(listener.acks) == sorted([f"r{i:05d}" for i in range(21)] + ["r00005", "r00099"])


def test_service_takes_backlog_queued_while_it_was_down(
    mqtt_url: str, sessions: Sessions, root: str, tmp_path: Path
) -> None:
    db = tmp_path / "sink.db"
    sink = SqliteSink(db)
    service_id = sessions.new("svc")
    with service_thread(mqtt_url, sink, service_id, root):
        pass  # creates the persistent session and its subscription
    pub = Publisher(mqtt_url)
    try:
        for i in range(50):
            pub.publish(reads_topic(f"lot-{i % 3}", root), payload(i, f"lot-{i % 3}"))
    finally:
        pub.close()
    with service_thread(mqtt_url, sink, service_id, root):
        wait_until(lambda: db_count(db, "SELECT count(*) FROM reads") == 50, 10, "backlog")
    assert db_count(db, "SELECT count(*) FROM charges") == 50


def test_sink_failure_leaves_the_read_unacked_until_it_is_recorded(
    mqtt_url: str, sessions: Sessions, root: str, tmp_path: Path
) -> None:
    """The sink raises on its 2nd and 3rd calls: that read must come back (the service
    reconnects so the broker redelivers), not be acked and lost."""
    db = tmp_path / "sink.db"
    sink = SqliteSink(db, fail_on=frozenset({2, 3}))
    pub = Publisher(mqtt_url)
    svc = ServiceThread(mqtt_url, sink, sessions.new("svc"), root, max_backoff=0.2)
    try:
        svc.wait_ready()
        for i in range(4):
            pub.publish(reads_topic("lot-1", root), payload(i))
        wait_until(lambda: db_count(db, "SELECT count(*) FROM reads") == 4, 10, "4 reads")
    finally:
        pub.close()
        svc.close()
    assert db_rows(db, "SELECT count(*), count(DISTINCT read_id) FROM charges") == [(4, 4)]
    assert svc.stats.sink_failures == 2 and svc.stats.connections >= 2


@pytest.mark.parametrize("crash", ["before_commit", "after_commit", "before_broker_ack"])
def test_kill9_service_at_each_step_loses_nothing_and_charges_once(
    crash: str, mqtt_url: str, sessions: Sessions, root: str, tmp_path: Path
) -> None:
    db = tmp_path / "sink.db"
    service_id = sessions.new("svc")
    n, crash_at = 8, 4
    proc = service_subprocess(mqtt_url, db, service_id, root, crash, crash_at)
    try:
        wait_ready(proc)
        pub = Publisher(mqtt_url)
        try:
            for i in range(n):
                pub.publish(reads_topic("lot-1", root), payload(i))  # each exactly once
        finally:
            pub.close()
        assert proc.wait(timeout=10) == CRASH_CODE
    finally:
        proc.kill()
        proc.wait()
    committed = db_count(db, "SELECT count(*) FROM reads")
    assert committed == (crash_at - 1 if crash == "before_commit" else crash_at)
    with service_thread(mqtt_url, SqliteSink(db), service_id, root):
        wait_until(lambda: db_count(db, "SELECT count(*) FROM reads") == n, 10, "all reads")
    assert db_rows(db, "SELECT count(*), count(DISTINCT read_id) FROM charges") == [(n, n)]
    crashed_read = f"r{crash_at - 1:05d}"
    kinds = [
        k for (k,) in db_rows(db, "SELECT kind FROM deliveries WHERE read_id = ?", (crashed_read,))
    ]
    if crash == "before_commit":
        assert kinds == ["recorded"]  # the first attempt left nothing; the broker resent it
    else:
        assert kinds == ["recorded", "duplicate"]  # recorded, unacked, redelivered, not recharged


def test_kill9_service_at_random_moments(
    mqtt_url: str, sessions: Sessions, root: str, tmp_path: Path
) -> None:
    db = tmp_path / "sink.db"
    service_id = sessions.new("svc")
    seed = int(os.environ.get("CB_KILL_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    n = 300
    proc = service_subprocess(mqtt_url, db, service_id, root)
    wait_ready(proc)  # the session exists from here on: the broker queues for it

    def publish_all() -> None:
        pub = Publisher(mqtt_url)
        try:
            for i in range(n):
                pub.publish(reads_topic("lot-1", root), payload(i))
                time.sleep(0.005)  # a steady stream over ~2 s
        finally:
            pub.close()

    publisher = threading.Thread(target=publish_all)
    publisher.start()
    kills = []
    try:
        for _ in range(3):
            time.sleep(rng.uniform(0.05, 0.3))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills.append(db_count(db, "SELECT count(*) FROM reads"))
            proc = service_subprocess(mqtt_url, db, service_id, root)
            wait_ready(proc)
        publisher.join(30)
        wait_until(lambda: db_count(db, "SELECT count(*) FROM reads") == n, 20, f"{n} reads")
    finally:
        proc.kill()
        proc.wait()
        publisher.join(30)
    assert db_rows(db, "SELECT count(*), count(DISTINCT read_id) FROM charges") == [(n, n)]
    assert kills[0] < n, f"seed {seed}: the first kill came after the stream"


async def _ack_on_receipt_consumer() -> None:
    import aiomqtt

    address = parse_broker_url(os.environ["CB_URL"])
    sink = SqliteSink(Path(os.environ["CB_DB"]))
    crash_at = int(os.environ["CB_CRASH_AT"])
    async with aiomqtt.Client(
        address.host, address.port, identifier=os.environ["CB_CLIENT"], clean_session=False
    ) as client:
        await client.subscribe(all_reads_filter(os.environ["CB_ROOT"]), qos=1)
        print("READY", flush=True)
        n = 0
        async for message in client.messages:
            n += 1
            await asyncio.sleep(0.2)  # the application is busy with the read ...
            if n == crash_at:
                os._exit(CRASH_CODE)  # ... and dies before its commit
            lot = lot_of_topic(str(message.topic), "reads", os.environ["CB_ROOT"])
            assert lot is not None and isinstance(message.payload, bytes)
            sink.record(lot, message.payload, datetime.now(UTC))


def ack_on_receipt_main() -> None:
    asyncio.run(_ack_on_receipt_consumer())


def test_control_ack_on_receipt_loses_reads_in_the_same_crash(
    mqtt_url: str, sessions: Sessions, root: str, tmp_path: Path
) -> None:
    """The negative control: an aiomqtt 2.x consumer (acked on receipt) dying before its
    commit loses the read for good, which the kill -9 tests above would catch."""
    db = tmp_path / "sink.db"
    service_id = sessions.new("svc")
    env = dict(
        os.environ,
        CB_URL=mqtt_url,
        CB_DB=str(db),
        CB_CLIENT=service_id,
        CB_ROOT=root,
        CB_CRASH_AT="2",
    )
    code = "from tests.test_parking_mqtt import ack_on_receipt_main; ack_on_receipt_main()"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE)
    try:
        wait_ready(proc)
        pub = Publisher(mqtt_url)
        try:
            for i in range(3):
                pub.publish(reads_topic("lot-1", root), payload(i))
        finally:
            pub.close()
        assert proc.wait(timeout=10) == CRASH_CODE
    finally:
        proc.kill()
        proc.wait()
    with service_thread(mqtt_url, SqliteSink(db), service_id, root):
        time.sleep(0.5)  # anything the broker still had for the session arrives now
    recorded = [r for (r,) in db_rows(db, "SELECT read_id FROM reads ORDER BY read_id")]
    assert recorded == ["r00000"]  # r00001 (and r00002, also acked on receipt) are lost


def test_a_private_broker_starts_in_a_relative_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `citybrain demo` writes under ./citybrain-demo: the broker runs in its folder, so a
    # relative config path must not reach it (it once did, and the demo's parking part
    # failed to start its broker)
    monkeypatch.chdir(tmp_path)
    with own_broker(Path("demo") / "broker") as broker:
        address = parse_broker_url(broker.url)
        assert reachable(address.host, address.port)
        assert broker.workdir.is_absolute()
